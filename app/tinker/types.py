"""Tinker's resources as the recovery service reads them off the wire."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict

CheckpointType = Literal["training", "sampler", "external"]


def _as_utc(value: datetime) -> datetime:
    # Tinker sends offsets; a bare time is read as UTC so comparisons never mix
    # naive and aware datetimes.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]


class TinkerModel(BaseModel):
    """Base of the wire models: unknown fields are ignored, as the SDK does."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())


class Checkpoint(TinkerModel):
    """A saved state of a training run."""

    checkpoint_id: str
    checkpoint_type: CheckpointType
    time: UtcDatetime
    tinker_path: str
    size_bytes: int | None = None
    public: bool = False
    user_metadata: dict[str, str] | None = None
    expires_at: UtcDatetime | None = None

    def is_expired(self, now: datetime) -> bool:
        """Whether the checkpoint has expired at `now` (naive means UTC)."""
        return self.expires_at is not None and self.expires_at <= _as_utc(now)


class TrainingRun(TinkerModel):
    """A training run, the thing the service watches for corruption."""

    training_run_id: str
    base_model: str
    model_owner: str
    is_lora: bool
    corrupted: bool = False
    lora_rank: int | None = None
    last_request_time: UtcDatetime
    last_checkpoint: Checkpoint | None = None
    last_sampler_checkpoint: Checkpoint | None = None
    user_metadata: dict[str, str] | None = None


class LoadResult(TinkerModel):
    """What a finished `load_weights` future reports; both fields are optional."""

    model_id: str | None = None
    path: str | None = None


@dataclass(frozen=True)
class Pending:
    """A future that is not done yet; ask again."""

    queue_state: str


@dataclass(frozen=True)
class Done:
    """A future that finished with a result."""

    result: LoadResult


FutureResult = Pending | Done
