"""The writes that the API and the engine share: register, stop, queue."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.errors import AlreadyPending, RecoveryDisabled
from app.events.store import append_event
from app.storage.models import (
    ACTIVE_RECOVERY_STATUSES,
    Policy,
    Recovery,
    RecoveryStatus,
    Run,
    RunStatus,
)
from app.storage.types import utcnow

RESUMABLE = (RunStatus.stopped, RunStatus.exhausted)


def new_id() -> str:
    """A fresh random identifier for rows the service creates."""
    return str(uuid.uuid4())


async def register_run(
    session: AsyncSession,
    run_id: str,
    policy: Policy,
    metadata: dict[str, Any],
    *,
    predecessor_run_id: str | None = None,
    require_enabled: bool = True,
) -> tuple[Run, bool]:
    """Start or resume watching `run_id`; True when the run is new."""
    if require_enabled and not policy.enabled:
        raise RecoveryDisabled(f"policy {policy.id} is disabled")
    now = utcnow()
    run = await session.get(Run, run_id, with_for_update=True)
    created = run is None
    if run is None:
        run = Run(
            run_id=run_id,
            policy_id=policy.id,
            metadata_=metadata,
            next_poll_at=now,
            predecessor_run_id=predecessor_run_id,
            created_at=now,
            updated_at=now,
        )
        session.add(run)
    else:
        run.policy_id = policy.id
        run.metadata_ = metadata
        run.updated_at = now
        if run.status in RESUMABLE:
            run.status = RunStatus.monitoring
            run.next_poll_at = now
            run.last_error = None
    await session.flush()
    await append_event(
        session, "monitoring_started", run_id, data={"policy_id": policy.id}
    )
    return run, created


async def stop_run(session: AsyncSession, run: Run) -> None:
    """Stop watching a run; a recovery whose attempt has not begun is cancelled."""
    now = utcnow()
    if run.active_recovery_id is not None:
        # Locked and read afresh: a worker may have claimed it since, and a
        # recovery that is running must not be overwritten as cancelled.
        recovery = await session.get(
            Recovery,
            run.active_recovery_id,
            with_for_update=True,
            populate_existing=True,
        )
        if recovery is not None and recovery.status in (
            RecoveryStatus.queued,
            RecoveryStatus.backoff,
        ):
            await cancel_recovery(session, recovery, "the run was unregistered")
            run.active_recovery_id = None
    run.status = RunStatus.stopped
    run.next_poll_at = None
    run.updated_at = now
    await append_event(session, "monitoring_stopped", run.run_id)


async def cancel_recovery(
    session: AsyncSession, recovery: Recovery, reason: str
) -> None:
    """End a recovery that will make no further attempt."""
    now = utcnow()
    recovery.status = RecoveryStatus.cancelled
    recovery.finished_at = now
    recovery.updated_at = now
    recovery.claim_token = None
    recovery.lease_until = None
    await append_event(
        session,
        "cancelled",
        recovery.run_id,
        recovery_id=recovery.id,
        data={"reason": reason},
    )


async def active_recovery(session: AsyncSession, run_id: str) -> Recovery | None:
    """The run's queued, running or waiting recovery, if there is one."""
    result = await session.exec(
        select(Recovery).where(
            Recovery.run_id == run_id,
            col(Recovery.status).in_(ACTIVE_RECOVERY_STATUSES),
        )
    )
    return result.first()


async def queue_recovery(
    session: AsyncSession,
    run: Run,
    trigger: str,
    *,
    checkpoint_path: str | None = None,
    restore_optimizer: bool | None = None,
    detected_checkpoint: str | None = None,
) -> Recovery:
    """Queue a recovery of `run` and write the event that announces it."""
    if await active_recovery(session, run.run_id) is not None:
        raise AlreadyPending(f"run {run.run_id} already has an active recovery")
    now = utcnow()
    recovery = Recovery(
        id=new_id(),
        run_id=run.run_id,
        trigger=trigger,
        checkpoint_path=checkpoint_path,
        restore_optimizer=restore_optimizer,
        next_attempt_at=now,
        created_at=now,
        updated_at=now,
    )
    session.add(recovery)
    run.status = RunStatus.recovering
    run.active_recovery_id = recovery.id
    run.updated_at = now
    await session.flush()
    data: dict[str, Any] = {"trigger": trigger}
    if trigger == "detected":
        data = {"checkpoint": detected_checkpoint}
    else:
        data["checkpoint_path"] = checkpoint_path
        data["restore_optimizer"] = restore_optimizer
    await append_event(
        session,
        "detected" if trigger == "detected" else "recovery_requested",
        run.run_id,
        recovery_id=recovery.id,
        data=data,
    )
    return recovery


async def runs_using(session: AsyncSession, policy_id: str) -> int:
    """How many watched runs depend on the policy."""
    result = await session.exec(
        select(func.count())
        .select_from(Run)
        .where(
            Run.policy_id == policy_id,
            col(Run.status).in_((RunStatus.monitoring, RunStatus.recovering)),
        )
    )
    return int(result.one())
