"""Request and response bodies of the API."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from app.tinker.paths import parse_tinker_path

INT32_MAX = 2_147_483_647
MAX_METADATA_BYTES = 64 * 1024

Milliseconds = Annotated[int, Field(ge=1, le=INT32_MAX)]
Url = Annotated[str, StringConstraints(max_length=2048)]
RunId = Annotated[str, StringConstraints(min_length=1, max_length=512)]


def check_training_path(value: str) -> str:
    """Accept only a resumable `tinker://<run>/weights/<name>` path."""
    path = parse_tinker_path(value)
    if not path.is_training:
        raise ValueError(
            f"{value!r} is a {path.segment} path; only training checkpoints "
            "(tinker://<run>/weights/<name>) can be restored"
        )
    return value


TrainingPath = Annotated[
    str, StringConstraints(max_length=1024), AfterValidator(check_training_path)
]


def check_webhook_url(value: str) -> str:
    """Accept http(s) URLs with a host."""
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("webhook URLs must be absolute http:// or https:// URLs")
    return value


WebhookUrl = Annotated[Url, AfterValidator(check_webhook_url)]


def has_nul(value: Any) -> bool:
    """Whether a NUL character hides anywhere in a JSON value."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_nul(item) for item in value)
    return False


class StrictBody(BaseModel):
    """A request body: exact types, no unknown fields, no NUL characters."""

    model_config = ConfigDict(strict=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        # Postgres cannot store NUL in text or JSON: refuse it up front.
        if has_nul(data):
            raise ValueError("text may not contain NUL characters")
        return data


class PolicyFields(StrictBody):
    """The recovery settings of a policy, with their defaults."""

    enabled: bool = False
    checkpoint_strategy: Literal["latest", "specific", "best"] = "latest"
    checkpoint_path: TrainingPath | None = None
    best_metric: (
        Annotated[str, StringConstraints(min_length=1, max_length=200)] | None
    ) = None
    best_mode: Literal["min", "max"] = "min"
    fallback_to_previous: bool = True
    restore_optimizer: bool = True
    poll_interval_ms: Annotated[int, Field(ge=100, le=INT32_MAX)] = 30_000
    max_attempts: Annotated[int, Field(ge=1, le=1_000)] = 3
    backoff_ms: Milliseconds = 5_000
    max_backoff_ms: Milliseconds = 60_000
    jitter: Literal["none", "full"] = "none"
    attempt_timeout_ms: Milliseconds = 600_000
    on_recovery_url: WebhookUrl | None = None
    on_failure_url: WebhookUrl | None = None
    restart_mode: Literal["service", "trainer"] = "service"
    on_restart_url: WebhookUrl | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.max_backoff_ms < self.backoff_ms:
            raise ValueError("max_backoff_ms must be at least backoff_ms")
        if self.checkpoint_strategy == "specific" and self.checkpoint_path is None:
            raise ValueError("checkpoint_strategy 'specific' needs checkpoint_path")
        if self.checkpoint_strategy != "specific" and self.checkpoint_path:
            raise ValueError("checkpoint_path is only allowed with 'specific'")
        if self.checkpoint_strategy == "best" and self.best_metric is None:
            raise ValueError("checkpoint_strategy 'best' needs best_metric")
        return self


PolicyName = Annotated[str, StringConstraints(min_length=1, max_length=100)]


class PolicyIn(PolicyFields):
    """A policy to create or to replace an existing one with."""

    name: PolicyName


class InlinePolicyIn(PolicyFields):
    """A policy given with a run; named after the run when no name is given."""

    name: PolicyName | None = None


class PolicyOut(PolicyFields):
    """A stored policy."""

    model_config = ConfigDict(strict=False, extra="ignore", from_attributes=True)

    id: str
    name: str
    owner_run_id: str | None = None
    created_at: datetime
    updated_at: datetime


class PolicyList(BaseModel):
    items: list[PolicyOut]


def _check_metadata(value: dict[str, Any]) -> dict[str, Any]:
    try:
        text = json.dumps(value, allow_nan=False)
    except ValueError as error:
        raise ValueError("metadata numbers must be finite") from error
    if len(text) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata is limited to {MAX_METADATA_BYTES} bytes of JSON")
    return value


Metadata = Annotated[dict[str, Any], AfterValidator(_check_metadata)]


class MonitorIn(StrictBody):
    """Which policy watches the run, and what to remember about it."""

    policy_id: Annotated[str, StringConstraints(max_length=36)] | None = None
    policy: InlinePolicyIn | None = None
    metadata: Metadata = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_policy(self) -> Self:
        if (self.policy_id is None) == (self.policy is None):
            raise ValueError("give exactly one of policy_id and policy")
        return self


class RecoverIn(StrictBody):
    """Overrides for a recovery started by hand."""

    checkpoint_path: TrainingPath | None = None
    restore_optimizer: bool | None = None


class ReportIn(StrictBody):
    """A trainer's report on the restart it was asked to do."""

    new_run_id: RunId | None = None
    error: Annotated[str, StringConstraints(min_length=1, max_length=4000)] | None = (
        None
    )

    @model_validator(mode="after")
    def _one_outcome(self) -> Self:
        if (self.new_run_id is None) == (self.error is None):
            raise ValueError("give exactly one of new_run_id and error")
        return self


class ErrorInfo(BaseModel):
    code: str
    message: str
    retryable: bool


class RunOut(BaseModel):
    """A watched run."""

    model_config = ConfigDict(from_attributes=True)

    run_id: str
    status: Literal["monitoring", "recovering", "recovered", "exhausted", "stopped"]
    policy_id: str | None
    metadata: dict[str, Any]
    last_polled_at: datetime | None
    next_poll_at: datetime | None
    last_error: ErrorInfo | None
    last_checkpoint: dict[str, Any] | None
    active_recovery_id: str | None
    successor_run_id: str | None
    predecessor_run_id: str | None
    created_at: datetime
    updated_at: datetime

    @field_validator("metadata", mode="before")
    @classmethod
    def _no_null_metadata(cls, value: Any) -> Any:
        return value or {}


class RunPage(BaseModel):
    items: list[RunOut]
    total: int
    limit: int
    offset: int


class AttemptOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    attempt: int
    status: str
    checkpoint_path: str | None
    restore_optimizer: bool
    new_run_id: str | None
    error: ErrorInfo | None
    deadline: datetime | None
    started_at: datetime
    finished_at: datetime | None


class RecoveryOut(BaseModel):
    """A recovery and its attempts."""

    id: str
    run_id: str
    status: Literal[
        "queued", "running", "backoff", "succeeded", "exhausted", "cancelled"
    ]
    trigger: Literal["detected", "manual"]
    checkpoint_path: str | None
    restore_optimizer: bool | None
    attempts: list[AttemptOut]
    next_attempt_at: datetime | None
    new_run_id: str | None
    error: ErrorInfo | None
    created_at: datetime
    finished_at: datetime | None


class RecoveryList(BaseModel):
    items: list[RecoveryOut]


class ErrorBody(BaseModel):
    """Every error response."""

    error: str
    detail: Any
