"""The tables: policies, runs, recoveries, attempts, events, sessions, webhooks."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Column, Index, String, text
from sqlmodel import Field, SQLModel

from app.storage.types import EventId, JSONType, UTCDateTime


class RunStatus(StrEnum):
    monitoring = "monitoring"
    recovering = "recovering"
    recovered = "recovered"
    exhausted = "exhausted"
    stopped = "stopped"


class RecoveryStatus(StrEnum):
    queued = "queued"
    running = "running"
    backoff = "backoff"
    succeeded = "succeeded"
    exhausted = "exhausted"
    cancelled = "cancelled"


ACTIVE_RECOVERY_STATUSES = (
    RecoveryStatus.queued,
    RecoveryStatus.running,
    RecoveryStatus.backoff,
)


class AttemptStatus(StrEnum):
    selecting = "selecting"
    restarting = "restarting"
    waiting_trainer = "waiting_trainer"
    verifying = "verifying"
    done = "done"
    failed = "failed"


def _time(nullable: bool = True, index: bool = False) -> Any:
    return Field(
        default=None,
        sa_column=Column(UTCDateTime(), nullable=nullable, index=index),
    )


def _json(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(JSONType, nullable=nullable))


class Policy(SQLModel, table=True):
    """How the runs that use it are recovered."""

    __tablename__ = "policies"

    id: str = Field(primary_key=True, max_length=36)
    name: str = Field(sa_column=Column(String(100), nullable=False, unique=True))
    enabled: bool = False
    checkpoint_strategy: str = "latest"
    checkpoint_path: str | None = None
    best_metric: str | None = None
    best_mode: str = "min"
    fallback_to_previous: bool = True
    restore_optimizer: bool = True
    poll_interval_ms: int = 30_000
    max_attempts: int = 3
    backoff_ms: int = 5_000
    max_backoff_ms: int = 60_000
    jitter: str = "none"
    attempt_timeout_ms: int = 600_000
    on_recovery_url: str | None = None
    on_failure_url: str | None = None
    restart_mode: str = "service"
    on_restart_url: str | None = None
    owner_run_id: str | None = Field(default=None, max_length=512)
    created_at: datetime = _time(nullable=False)
    updated_at: datetime = _time(nullable=False)


class Run(SQLModel, table=True):
    """A Tinker training run the service watches."""

    __tablename__ = "runs"
    __table_args__ = (Index("ix_runs_due", "status", "next_poll_at"),)

    run_id: str = Field(primary_key=True, max_length=512)
    status: str = Field(default=RunStatus.monitoring, max_length=16)
    policy_id: str | None = Field(
        default=None,
        foreign_key="policies.id",
        ondelete="SET NULL",
        index=True,
        max_length=36,
    )
    metadata_: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column("metadata", JSONType, nullable=False)
    )
    last_polled_at: datetime | None = _time()
    next_poll_at: datetime | None = _time()
    poll_lease_until: datetime | None = _time()
    poll_claim: str | None = Field(default=None, max_length=36)
    last_error: dict[str, Any] | None = _json()
    last_checkpoint: dict[str, Any] | None = _json()
    active_recovery_id: str | None = Field(default=None, max_length=36)
    successor_run_id: str | None = Field(default=None, max_length=512)
    predecessor_run_id: str | None = Field(default=None, max_length=512)
    created_at: datetime = _time(nullable=False)
    updated_at: datetime = _time(nullable=False)


class Recovery(SQLModel, table=True):
    """One recovery of a run from one corruption, made of attempts."""

    __tablename__ = "recoveries"
    __table_args__ = (
        Index(
            "ux_recoveries_one_active",
            "run_id",
            unique=True,
            sqlite_where=text("status IN ('queued', 'running', 'backoff')"),
            postgresql_where=text("status IN ('queued', 'running', 'backoff')"),
        ),
        Index("ix_recoveries_due", "status", "next_attempt_at"),
    )

    id: str = Field(primary_key=True, max_length=36)
    run_id: str = Field(foreign_key="runs.run_id", index=True, max_length=512)
    status: str = Field(default=RecoveryStatus.queued, max_length=16)
    trigger: str = Field(max_length=16)
    checkpoint_path: str | None = None
    restore_optimizer: bool | None = None
    attempt_count: int = 0
    next_attempt_at: datetime | None = _time()
    new_run_id: str | None = Field(default=None, max_length=512)
    error: dict[str, Any] | None = _json()
    claim_token: str | None = Field(default=None, max_length=36)
    lease_until: datetime | None = _time()
    session_key: str | None = Field(default=None, max_length=64)
    session_id: str | None = Field(default=None, max_length=256)
    created_at: datetime = _time(nullable=False)
    updated_at: datetime = _time(nullable=False)
    finished_at: datetime | None = _time()


class Attempt(SQLModel, table=True):
    """One try at restoring a run: a checkpoint, a restart, a check."""

    __tablename__ = "attempts"

    recovery_id: str = Field(
        foreign_key="recoveries.id", primary_key=True, max_length=36
    )
    attempt: int = Field(primary_key=True)
    status: str = Field(default=AttemptStatus.selecting, max_length=16)
    checkpoint_path: str | None = None
    restore_optimizer: bool = True
    idempotency_key: str | None = Field(default=None, max_length=64)
    model_seq_id: int | None = None
    request_id: str | None = Field(default=None, max_length=256)
    fallbacks_left: int | None = None
    new_run_id: str | None = Field(default=None, max_length=512)
    error: dict[str, Any] | None = _json()
    deadline: datetime | None = _time()
    started_at: datetime = _time(nullable=False)
    finished_at: datetime | None = _time()


class TinkerSession(SQLModel, table=True):
    """A Tinker session the service created; kept alive by heartbeats."""

    __tablename__ = "tinker_sessions"

    session_id: str = Field(primary_key=True, max_length=256)
    alive: bool = True
    created_at: datetime = _time(nullable=False)
    last_heartbeat_at: datetime | None = _time()


class Event(SQLModel, table=True):
    """A step of the service's work, as clients see it."""

    __tablename__ = "events"
    # Ids are never handed out twice, even after the newest events are pruned.
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(
        default=None,
        sa_column=Column(EventId, primary_key=True, autoincrement=True),
    )
    type: str = Field(max_length=32, index=True)
    run_id: str = Field(max_length=512, index=True)
    recovery_id: str | None = Field(default=None, max_length=36)
    attempt: int | None = None
    time: datetime = _time(nullable=False, index=True)
    data: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSONType, nullable=False)
    )


class WebhookDelivery(SQLModel, table=True):
    """A webhook POST waiting to be delivered, or its record once it was."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhooks_due", "status", "next_attempt_at"),)

    id: str = Field(primary_key=True, max_length=36)
    kind: str = Field(max_length=32)
    url: str
    body: str
    run_id: str = Field(max_length=512)
    recovery_id: str | None = Field(default=None, max_length=36)
    status: str = Field(default="pending", max_length=16)
    attempts: int = 0
    next_attempt_at: datetime = _time(nullable=False)
    last_error: str | None = None
    claim_token: str | None = Field(default=None, max_length=36)
    lease_until: datetime | None = _time()
    created_at: datetime = _time(nullable=False)
    delivered_at: datetime | None = _time()
