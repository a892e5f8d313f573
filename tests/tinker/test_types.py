"""Tinker's wire models: what they accept, ignore and refuse."""

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from app.tinker.types import Checkpoint, LoadResult, TrainingRun


def checkpoint_json(**changes: object) -> dict[str, object]:
    body: dict[str, object] = {
        "checkpoint_id": "weights/step-100",
        "checkpoint_type": "training",
        "time": "2025-03-01T12:00:00Z",
        "tinker_path": "tinker://run:train:0/weights/step-100",
    }
    return body | changes


def test_a_checkpoint_fills_in_its_defaults() -> None:
    checkpoint = Checkpoint.model_validate(checkpoint_json())

    assert checkpoint.size_bytes is None
    assert checkpoint.public is False
    assert checkpoint.user_metadata is None
    assert checkpoint.expires_at is None
    assert checkpoint.time == datetime(2025, 3, 1, 12, tzinfo=UTC)


def test_unknown_fields_are_ignored() -> None:
    checkpoint = Checkpoint.model_validate(checkpoint_json(owner="x", extra={"a": 1}))

    assert not hasattr(checkpoint, "owner")
    assert "owner" not in checkpoint.model_dump()


@pytest.mark.parametrize(
    "changes",
    [
        {"checkpoint_type": "optimizer"},
        {"time": "yesterday"},
        {"checkpoint_id": None},
        {"user_metadata": {"loss": 0.5}},
    ],
)
def test_bad_checkpoints_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Checkpoint.model_validate(checkpoint_json(**changes))


def test_a_checkpoint_without_expiry_never_expires() -> None:
    checkpoint = Checkpoint.model_validate(checkpoint_json())

    assert not checkpoint.is_expired(datetime.max.replace(tzinfo=UTC))


def test_expiry_compares_with_aware_and_naive_times() -> None:
    checkpoint = Checkpoint.model_validate(
        checkpoint_json(expires_at="2025-03-02T00:00:00+00:00")
    )
    moment = datetime(2025, 3, 2, tzinfo=UTC)

    assert not checkpoint.is_expired(moment - timedelta(seconds=1))
    assert checkpoint.is_expired(moment)
    assert checkpoint.is_expired(datetime(2025, 3, 3))


def test_naive_times_on_the_wire_are_read_as_utc() -> None:
    checkpoint = Checkpoint.model_validate(
        checkpoint_json(time="2025-03-01T12:00:00", expires_at="2025-03-02T00:00:00")
    )

    assert checkpoint.time.tzinfo is not None
    assert checkpoint.expires_at == datetime(2025, 3, 2, tzinfo=UTC)


def test_a_training_run_reads_like_the_protocol_says() -> None:
    run = TrainingRun.model_validate(
        {
            "training_run_id": "sess:train:0",
            "base_model": "Qwen/Qwen3-8B",
            "model_owner": "someone",
            "is_lora": True,
            "lora_rank": 32,
            "last_request_time": "2025-03-01T12:00:00Z",
            "last_checkpoint": checkpoint_json(),
            "last_sampler_checkpoint": None,
            "some_future_field": [1, 2, 3],
        }
    )

    assert run.corrupted is False
    assert run.last_checkpoint is not None
    assert run.last_checkpoint.checkpoint_id == "weights/step-100"
    assert run.last_sampler_checkpoint is None
    assert run.user_metadata is None


def test_a_training_run_needs_its_required_fields() -> None:
    with pytest.raises(ValidationError, match="last_request_time"):
        TrainingRun.model_validate(
            {
                "training_run_id": "r",
                "base_model": "m",
                "model_owner": "o",
                "is_lora": False,
            }
        )


def test_a_load_result_may_be_empty() -> None:
    assert LoadResult.model_validate({"type": "load_weights"}) == LoadResult()
    assert LoadResult.model_validate({"model_id": "s:train:1"}).model_id == "s:train:1"
