"""Claiming due work: the only place where the two dialects differ.

On Postgres, rows are picked with `FOR UPDATE SKIP LOCKED`, so replicas that
claim at the same moment take different rows. SQLite has one writer at a time
(every transaction begins IMMEDIATE), so a plain select-then-update inside one
transaction is already exclusive.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.storage.models import Policy, Recovery, RecoveryStatus, Run, RunStatus

# Well below what either database takes as bound values in one statement.
IDS_PER_STATEMENT = 5_000


@dataclass(frozen=True, slots=True)
class DuePoll:
    """A run whose poll was claimed, with the time it was due."""

    run_id: str
    due_at: datetime


def is_postgres(session: AsyncSession) -> bool:
    """Whether the session talks to Postgres."""
    return session.get_bind().dialect.name == "postgresql"


async def claim_due_polls(
    session: AsyncSession, now: datetime, limit: int
) -> list[DuePoll]:
    """Move the schedule of up to `limit` due runs one interval on and return them.

    Moving `next_poll_at` is the claim: no other replica sees the run as due
    again until its next interval, and a replica that dies mid-poll costs one
    missed poll, not a stuck run. The next poll is due one interval after this
    claim, not after the time this one was due: a claim made late must not
    leave less than an interval before the next one.
    """
    query = (
        select(Run.run_id, col(Run.next_poll_at), Policy.poll_interval_ms)
        .join(Policy, col(Policy.id) == col(Run.policy_id))
        .where(Run.status == RunStatus.monitoring, col(Run.next_poll_at) <= now)
        .order_by(col(Run.next_poll_at))
        .limit(limit)
    )
    if is_postgres(session):
        query = query.with_for_update(skip_locked=True, of=Run)
    rows = (await session.exec(query)).all()
    claimed: list[DuePoll] = []
    # Runs of one policy are due again at the same moment: one statement for
    # each interval, rather than one per run.
    by_interval: dict[int, list[str]] = defaultdict(list)
    for run_id, due_at, interval_ms in rows:
        assert due_at is not None
        by_interval[interval_ms].append(run_id)
        claimed.append(DuePoll(run_id, due_at))
    for interval_ms, run_ids in by_interval.items():
        following = now + timedelta(milliseconds=interval_ms)
        for start in range(0, len(run_ids), IDS_PER_STATEMENT):
            chunk = run_ids[start : start + IDS_PER_STATEMENT]
            await session.exec(
                update(Run)
                .where(col(Run.run_id).in_(chunk))
                .values(next_poll_at=following)
            )
    return claimed


async def claim_due_recoveries(
    session: AsyncSession,
    now: datetime,
    limit: int,
    token: str,
    lease: timedelta,
) -> list[str]:
    """Claim up to `limit` recoveries that are due or whose lease lapsed."""
    waiting = and_(
        col(Recovery.status).in_((RecoveryStatus.queued, RecoveryStatus.backoff)),
        col(Recovery.next_attempt_at) <= now,
    )
    orphaned = and_(
        col(Recovery.status) == RecoveryStatus.running,
        or_(col(Recovery.lease_until).is_(None), col(Recovery.lease_until) < now),
    )
    query = (
        select(Recovery.id)
        .where(or_(waiting, orphaned))
        .order_by(col(Recovery.next_attempt_at))
        .limit(limit)
    )
    if is_postgres(session):
        query = query.with_for_update(skip_locked=True)
    ids = list(await session.exec(query))
    if ids:
        await session.exec(
            update(Recovery)
            .where(col(Recovery.id).in_(ids))
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
        .where(col(Recovery.id) == recovery_id, col(Recovery.claim_token) == token)
        .values(lease_until=until)
    )
    return bool(result.rowcount)


async def release_claim(session: AsyncSession, recovery_id: str, token: str) -> None:
    """Hand a claim back so that another worker may take it at once."""
    await session.exec(
        update(Recovery)
        .where(col(Recovery.id) == recovery_id, col(Recovery.claim_token) == token)
        .values(claim_token=None, lease_until=None)
    )


async def next_poll_due(session: AsyncSession) -> datetime | None:
    """When the earliest watched run is due for a poll."""
    query = select(func.min(col(Run.next_poll_at))).where(
        Run.status == RunStatus.monitoring
    )
    return (await session.exec(query)).one()


async def next_recovery_due(session: AsyncSession) -> datetime | None:
    """When the earliest recovery is due: an attempt, or a lease that lapses."""
    waiting = select(func.min(col(Recovery.next_attempt_at))).where(
        col(Recovery.status).in_((RecoveryStatus.queued, RecoveryStatus.backoff))
    )
    # A trainer-mode wait is a running recovery whose lease ends at its deadline.
    leased = select(func.min(col(Recovery.lease_until))).where(
        col(Recovery.status) == RecoveryStatus.running
    )
    times = [(await session.exec(query)).one() for query in (waiting, leased)]
    return min((t for t in times if t is not None), default=None)
