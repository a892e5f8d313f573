"""Tinker checkpoint paths: `tinker://<training_run_id>/<segment>/<name>`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

SCHEME: Final = "tinker://"

# What each path segment holds, as Tinker names the checkpoint type.
SEGMENT_TYPES: Final = {
    "weights": "training",
    "sampler_weights": "sampler",
    "external_weights": "external",
}


@dataclass(frozen=True)
class TinkerPath:
    """A parsed checkpoint path; `str()` gives it back in its `tinker://` form."""

    run_id: str
    segment: str
    name: str

    @property
    def checkpoint_id(self) -> str:
        """The id Tinker lists the checkpoint under, `<segment>/<name>`."""
        return f"{self.segment}/{self.name}"

    @property
    def is_training(self) -> bool:
        """Whether this is a training checkpoint, the only kind a run resumes from."""
        return self.segment == "weights"

    def __str__(self) -> str:
        return f"{SCHEME}{self.run_id}/{self.checkpoint_id}"


def parse_tinker_path(text: str) -> TinkerPath:
    """Parse `text` as a checkpoint path, or raise ValueError saying what is wrong."""
    if not text.startswith(SCHEME):
        raise ValueError(f"not a Tinker path (must start with {SCHEME}): {text!r}")

    if any(char.isspace() for char in text):
        raise ValueError(f"a Tinker path has no whitespace: {text!r}")

    parts = text.removeprefix(SCHEME).split("/")
    if len(parts) != 3 or not all(parts):
        raise ValueError(
            "a Tinker path is tinker://<run>/<segment>/<name>, "
            f"three non-empty parts: {text!r}"
        )

    run_id, segment, name = parts
    if segment not in SEGMENT_TYPES:
        allowed = ", ".join(SEGMENT_TYPES)
        raise ValueError(f"unknown segment {segment!r} (one of {allowed}): {text!r}")
    return TinkerPath(run_id=run_id, segment=segment, name=name)
