"""Reports from trainers on the restarts they were asked to do."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, status
from sqlmodel.ext.asyncio.session import AsyncSession

from app.api.deps import RecoveryIdPath, RuntimeDep, SessionDep, require_token
from app.api.responses import errors, recovery_out
from app.errors import RecoveryNotFound, StaleAttempt, ValidationFailed
from app.events.store import append_event
from app.schemas import INT32_MAX, RecoveryOut, ReportIn
from app.storage.db import on_commit
from app.storage.models import Attempt, AttemptStatus, Recovery, RecoveryStatus
from app.storage.types import utcnow

router = APIRouter(
    tags=["runs"],
    dependencies=[Depends(require_token)],
    responses=errors(RecoveryNotFound, StaleAttempt, ValidationFailed),
)

AttemptPath = Annotated[
    int, Path(ge=1, le=INT32_MAX, description="The attempt's number, from 1")
]


async def locked_recovery(session: AsyncSession, recovery_id: str) -> Recovery:
    """The recovery, locked against the worker that may be reading it."""
    recovery = await session.get(Recovery, recovery_id, with_for_update=True)
    if recovery is None:
        raise RecoveryNotFound(f"recovery {recovery_id!r} does not exist")
    return recovery


async def waiting_attempt(
    session: AsyncSession, recovery: Recovery, number: int
) -> Attempt:
    """The attempt `number`, if it is the current one and still awaits a report."""
    if recovery.status != RecoveryStatus.running or number != recovery.attempt_count:
        raise StaleAttempt(
            f"attempt {number} is not the current attempt of recovery {recovery.id}"
        )
    row = await session.get(
        Attempt, (recovery.id, number), with_for_update=True, populate_existing=True
    )
    if row is None or row.status != AttemptStatus.waiting_trainer:
        raise StaleAttempt(f"attempt {number} is not waiting for a restart")
    if row.new_run_id is not None or row.error is not None:
        raise StaleAttempt(f"attempt {number} was already reported on")
    if row.deadline is not None and utcnow() >= row.deadline:
        # The worker fails the attempt as timed out as soon as it looks, so a
        # report now would be accepted only to be ignored.
        raise StaleAttempt(f"attempt {number} timed out at {row.deadline.isoformat()}")
    return row


def reported(body: ReportIn) -> dict[str, Any]:
    """The data of the `restart_reported` event."""
    if body.new_run_id is not None:
        return {"new_run_id": body.new_run_id}
    return {"error": body.error}


@router.post(
    "/recoveries/{recovery_id}/attempts/{attempt}/report",
    status_code=status.HTTP_202_ACCEPTED,
)
async def report_restart(
    recovery_id: RecoveryIdPath,
    attempt: AttemptPath,
    body: ReportIn,
    session: SessionDep,
    runtime: RuntimeDep,
) -> RecoveryOut:
    """Report the trainer's restart: the new run's id, or why it failed."""
    recovery = await locked_recovery(session, recovery_id)
    if body.new_run_id == recovery.run_id:
        raise ValidationFailed(
            "new_run_id", "the new run must differ from the run being recovered"
        )
    row = await waiting_attempt(session, recovery, attempt)

    row.new_run_id = body.new_run_id
    if body.error is not None:
        row.error = {"code": "trainer_error", "message": body.error, "retryable": True}
    # The worker's hand-back left the claim to lapse at the deadline; lapsing
    # it now lets a worker take the report up at once.
    recovery.lease_until = utcnow()
    await append_event(
        session,
        "restart_reported",
        recovery.run_id,
        recovery_id=recovery.id,
        attempt=attempt,
        data=reported(body),
    )
    on_commit(session, runtime.wake_workers)
    return await recovery_out(session, recovery)
