"""Choosing the checkpoint an attempt restarts from."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from app.tinker.types import Checkpoint


class NoCheckpoint(Exception):
    """No training checkpoint is left that the policy allows."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Choice:
    """What the policy asks for in one attempt."""

    strategy: str
    path: str | None = None
    metric: str | None = None
    mode: str = "min"


def resumable(checkpoints: Sequence[Checkpoint], now: datetime) -> list[Checkpoint]:
    """The training checkpoints that have not expired, newest first."""
    usable = [
        c
        for c in checkpoints
        if c.checkpoint_type == "training" and not c.is_expired(now)
    ]
    return sorted(usable, key=lambda c: c.time, reverse=True)


def select_checkpoint(
    choice: Choice,
    checkpoints: Sequence[Checkpoint],
    *,
    failed: Collection[str],
    now: datetime,
) -> str:
    """The path to restart from, given the paths that failed for good before.

    After a permanent failure, the next older training checkpoint than the one
    that failed is taken, whatever the strategy first chose.
    """
    usable = resumable(checkpoints, now)
    if not failed:
        return _first_choice(choice, usable, checkpoints, now)
    failed_times = [c.time for c in checkpoints if c.tinker_path in failed]
    older = [
        c
        for c in usable
        if c.tinker_path not in failed
        and (not failed_times or c.time < min(failed_times))
    ]
    if not older:
        raise NoCheckpoint(
            "no_older_checkpoint",
            "no older training checkpoint is left to fall back to",
        )
    return older[0].tinker_path


def _first_choice(
    choice: Choice,
    usable: list[Checkpoint],
    everything: Sequence[Checkpoint],
    now: datetime,
) -> str:
    if choice.strategy == "specific":
        assert choice.path is not None
        return _check_specific(choice.path, everything, now)
    if not usable:
        raise NoCheckpoint(
            "no_checkpoint",
            "the run has no training checkpoint to restart from "
            "(it was corrupted before its first one, or all have expired)",
        )
    if choice.strategy == "best":
        return _best(choice, usable).tinker_path
    return usable[0].tinker_path


def _check_specific(path: str, everything: Sequence[Checkpoint], now: datetime) -> str:
    known = {c.tinker_path: c for c in everything}
    checkpoint = known.get(path)
    if checkpoint is not None and checkpoint.is_expired(now):
        raise NoCheckpoint("checkpoint_expired", f"checkpoint {path} has expired")
    return path


def _best(choice: Choice, usable: list[Checkpoint]) -> Checkpoint:
    scored = [
        (value, checkpoint)
        for checkpoint in usable
        if (value := _metric(checkpoint, choice.metric)) is not None
    ]
    if not scored:
        raise NoCheckpoint(
            "no_metric",
            f"no training checkpoint records the metric {choice.metric!r}",
        )
    pick = min if choice.mode == "min" else max
    return pick(scored, key=lambda pair: pair[0])[1]


def _metric(checkpoint: Checkpoint, name: str | None) -> float | None:
    raw = (checkpoint.user_metadata or {}).get(name or "")
    try:
        value = float(raw) if raw is not None else None
    except ValueError:
        return None
    return None if value is None or math.isnan(value) else value
