"""Claiming due work: the only place where the two dialects differ.

On Postgres, rows are picked with `FOR UPDATE SKIP LOCKED`, so replicas that
claim at the same moment take different rows. SQLite has one writer at a time
(every transaction begins IMMEDIATE), so a plain select-then-update inside one
transaction is already exclusive.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, update
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.storage.models import Policy, Recovery, RecoveryStatus, Run, RunStatus


@dataclass(frozen=True, slots=True)
class DuePoll:
    """A run whose poll was claimed, with the time it was due."""

    run_id: str
    due_at: datetime


async def claim_due_polls(
    session: AsyncSession, now: datetime, limit: int
) -> list[DuePoll]:
    """Move the schedule of up to `limit` due runs one interval on and return them.

    Moving `next_poll_at` is the claim: no other replica sees the run as due
    again until its next interval, and a replica that dies mid-poll costs one
    missed poll, not a stuck run.
    """
    query = (
        select(Run.run_id, Run.next_poll_at, Policy.poll_interval_ms)
        .join(Policy, Policy.id == Run.policy_id)  # type: ignore[arg-type]
        .where(
            Run.status == RunStatus.monitoring,  # type: ignore[arg-type]
            Run.next_poll_at <= now,  # type: ignore[arg-type,operator]
        )
        .order_by(Run.next_poll_at)  # type: ignore[arg-type]
        .limit(limit)
    )
    if session.bind.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True, of=Run)  # type: ignore[arg-type]
    rows = (await session.exec(query)).all()
    if not rows:
        return []
    schedule = []
    for run_id, due_at, interval_ms in rows:
        following = due_at + timedelta(milliseconds=interval_ms)
        if following <= now:
            following = now + timedelta(milliseconds=interval_ms)
        schedule.append({"run_id": run_id, "next_poll_at": following})
    await session.exec(update(Run), params=schedule)
    return [DuePoll(run_id, due_at) for run_id, due_at, _ in rows]


async def claim_due_recoveries(
    session: AsyncSession,
    now: datetime,
    limit: int,
    token: str,
    lease: timedelta,
) -> list[str]:
    """Claim up to `limit` recoveries that are due or whose lease lapsed."""
    waiting = and_(
        Recovery.status.in_((RecoveryStatus.queued, RecoveryStatus.backoff)),  # type: ignore[attr-defined]
        Recovery.next_attempt_at <= now,  # type: ignore[operator]
    )
    orphaned = and_(
        Recovery.status == RecoveryStatus.running,  # type: ignore[arg-type]
        or_(Recovery.lease_until.is_(None), Recovery.lease_until < now),  # type: ignore[union-attr,operator]
    )
    query = (
        select(Recovery.id)
        .where(or_(waiting, orphaned))
        .order_by(Recovery.next_attempt_at)  # type: ignore[arg-type]
        .limit(limit)
    )
    if session.bind.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    ids = list(await session.exec(query))
    if ids:
        await session.exec(
            update(Recovery)
            .where(Recovery.id.in_(ids))  # type: ignore[attr-defined]
            .values(
                status=RecoveryStatus.running,
                claim_token=token,
                lease_until=now + lease,
                updated_at=now,
            )
        )
    return ids


async def renew_lease(
    session: AsyncSession, recovery_id: str, token: str, until: datetime
) -> bool:
    """Extend a claim; False when the claim was lost to another worker."""
    result = await session.exec(
        update(Recovery)
        .where(Recovery.id == recovery_id, Recovery.claim_token == token)  # type: ignore[arg-type]
        .values(lease_until=until)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def release_claim(session: AsyncSession, recovery_id: str, token: str) -> None:
    """Hand a claim back so that another worker may take it at once."""
    await session.exec(
        update(Recovery)
        .where(Recovery.id == recovery_id, Recovery.claim_token == token)  # type: ignore[arg-type]
        .values(claim_token=None, lease_until=None)
    )
