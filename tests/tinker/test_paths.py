"""Parsing and printing `tinker://` checkpoint paths."""

import pytest

from app.tinker.paths import TinkerPath, parse_tinker_path

RUN = "0f6c2a54-1d9e-4a3b-9c55-1b2e3f4a5b6c:train:0"


def test_parses_a_training_path_whose_run_id_has_colons() -> None:
    path = parse_tinker_path(f"tinker://{RUN}/weights/step-100")

    assert path == TinkerPath(run_id=RUN, segment="weights", name="step-100")
    assert path.checkpoint_id == "weights/step-100"
    assert path.is_training
    assert str(path) == f"tinker://{RUN}/weights/step-100"


@pytest.mark.parametrize("segment", ["sampler_weights", "external_weights"])
def test_other_segments_parse_but_are_not_training(segment: str) -> None:
    path = parse_tinker_path(f"tinker://run-1/{segment}/final")

    assert path.segment == segment
    assert path.checkpoint_id == f"{segment}/final"
    assert not path.is_training


def test_a_bare_uuid_run_id_is_fine() -> None:
    path = parse_tinker_path("tinker://0f6c2a54-1d9e-4a3b-9c55-1b2e3f4a5b6c/weights/a")

    assert path.run_id == "0f6c2a54-1d9e-4a3b-9c55-1b2e3f4a5b6c"


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "must start with tinker://"),
        ("https://run/weights/a", "must start with tinker://"),
        ("TINKER://run/weights/a", "must start with tinker://"),
        ("tinker://", "three non-empty parts"),
        ("tinker://run", "three non-empty parts"),
        ("tinker://run/weights", "three non-empty parts"),
        ("tinker://run/weights/", "three non-empty parts"),
        ("tinker:///weights/a", "three non-empty parts"),
        ("tinker://run//a", "three non-empty parts"),
        ("tinker://run/weights/a/b", "three non-empty parts"),
        ("tinker://run/weights/a/", "three non-empty parts"),
        ("tinker://run/checkpoints/a", "unknown segment 'checkpoints'"),
        ("tinker://run/Weights/a", "unknown segment 'Weights'"),
        ("tinker://run/weights/a b", "no whitespace"),
        (" tinker://run/weights/a", "must start with tinker://"),
    ],
)
def test_refuses_anything_else_saying_why(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint) as caught:
        parse_tinker_path(text)

    assert repr(text) in str(caught.value)


def test_paths_are_values() -> None:
    first = parse_tinker_path("tinker://run/weights/a")

    assert first == parse_tinker_path("tinker://run/weights/a")
    assert len({first, parse_tinker_path("tinker://run/weights/a")}) == 1
    with pytest.raises(AttributeError):
        first.name = "b"  # type: ignore[misc]
