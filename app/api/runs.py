"""Watched runs, and the recoveries started for them."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, Query, Response, status
from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.api.deps import (
    RecoveryIdPath,
    RunDep,
    RunIdPath,
    RuntimeDep,
    SessionDep,
    require_token,
)
from app.api.policies import check_targets, create_policy, find_policy
from app.api.responses import errors, recovery_out, run_out
from app.config import Settings
from app.engine.commands import queue_recovery, register_run, stop_run
from app.errors import (
    AlreadyPending,
    PolicyExists,
    PolicyNotFound,
    RecoveryDisabled,
    RecoveryNotFound,
    RunNotFound,
    ValidationFailed,
)
from app.schemas import (
    MonitorIn,
    PolicyIn,
    RecoverIn,
    RecoveryList,
    RecoveryOut,
    RunOut,
    RunPage,
)
from app.storage.db import on_commit
from app.storage.models import Policy, Recovery, Run

router = APIRouter(
    tags=["runs"],
    dependencies=[Depends(require_token)],
    responses=errors(ValidationFailed),
)

RunStatusName = Literal["monitoring", "recovering", "recovered", "exhausted", "stopped"]


async def policy_for(
    session: AsyncSession, run_id: str, body: MonitorIn, settings: Settings
) -> Policy:
    """The stored policy the body names, or the inline one it carries."""
    if body.policy_id is not None:
        return await find_policy(session, body.policy_id)
    assert body.policy is not None
    check_targets(body.policy, settings)
    fields = body.policy.model_dump(exclude={"name"})
    name = body.policy.name or f"run:{run_id}"[:100]
    if not fields["enabled"]:
        raise RecoveryDisabled("the inline policy is disabled")
    run = await session.get(Run, run_id)
    owned = await session.get(Policy, run.policy_id) if run and run.policy_id else None
    if owned is not None and owned.owner_run_id == run_id:
        for field, value in fields.items():
            setattr(owned, field, value)
        owned.name = name
        return owned
    return await create_policy(session, PolicyIn(name=name, **fields), run_id)


@router.post(
    "/runs/{run_id}/monitor",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": RunOut, "description": "The run was already registered"},
        **errors(PolicyNotFound, RecoveryDisabled, PolicyExists, ValidationFailed),
    },
)
async def monitor_run(
    run_id: RunIdPath,
    body: MonitorIn,
    session: SessionDep,
    runtime: RuntimeDep,
    response: Response,
) -> RunOut:
    """Start watching a Tinker training run under a policy."""
    policy = await policy_for(session, run_id, body, runtime.settings)
    run, created = await register_run(session, run_id, policy, body.metadata)
    if not created:
        response.status_code = status.HTTP_200_OK
    on_commit(session, runtime.wake_monitor)
    return run_out(run)


@router.delete(
    "/runs/{run_id}/monitor",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=errors(RunNotFound),
)
async def unmonitor_run(run: RunDep, session: SessionDep) -> Response:
    """Stop watching a run; a recovery that has not started its attempt is cancelled."""
    await stop_run(session, run)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/runs")
async def list_runs(
    session: SessionDep,
    status_: Annotated[RunStatusName | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
) -> RunPage:
    """List watched runs, oldest registration first."""
    query = select(Run)
    if status_ is not None:
        query = query.where(Run.status == status_)
    total = await session.exec(select(func.count()).select_from(query.subquery()))
    rows = await session.exec(
        query.order_by(col(Run.created_at), col(Run.run_id)).limit(limit).offset(offset)
    )
    return RunPage(
        items=[run_out(run) for run in rows],
        total=int(total.one()),
        limit=limit,
        offset=offset,
    )


@router.get("/runs/{run_id}", responses=errors(RunNotFound))
async def get_run(run: RunDep) -> RunOut:
    """Read one watched run."""
    return run_out(run)


@router.post(
    "/runs/{run_id}/recover",
    status_code=status.HTTP_202_ACCEPTED,
    responses=errors(RunNotFound, AlreadyPending, RecoveryDisabled, ValidationFailed),
)
async def recover_run(
    run: RunDep,
    session: SessionDep,
    runtime: RuntimeDep,
    body: Annotated[RecoverIn | None, Body()] = None,
) -> RecoveryOut:
    """Start a recovery by hand, also for an exhausted or stopped run."""
    if run.policy_id is None:
        raise RecoveryDisabled("the run has no policy; register it again first")
    body = body or RecoverIn()
    recovery = await queue_recovery(
        session,
        run,
        "manual",
        checkpoint_path=body.checkpoint_path,
        restore_optimizer=body.restore_optimizer,
    )
    on_commit(session, runtime.wake_workers)
    return await recovery_out(session, recovery)


@router.get("/runs/{run_id}/recoveries", responses=errors(RunNotFound))
async def list_recoveries(run: RunDep, session: SessionDep) -> RecoveryList:
    """List a run's recoveries, newest first."""
    rows = await session.exec(
        select(Recovery)
        .where(Recovery.run_id == run.run_id)
        .order_by(col(Recovery.created_at).desc())
    )
    return RecoveryList(items=[await recovery_out(session, r) for r in rows])


@router.get("/recoveries/{recovery_id}", responses=errors(RecoveryNotFound))
async def get_recovery(recovery_id: RecoveryIdPath, session: SessionDep) -> RecoveryOut:
    """Read one recovery with its attempts."""
    recovery = await session.get(Recovery, recovery_id)
    if recovery is None:
        raise RecoveryNotFound(f"recovery {recovery_id!r} does not exist")
    return await recovery_out(session, recovery)
