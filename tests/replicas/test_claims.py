"""A claim that was lost cannot write over the claim that took its place."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlmodel import col, select

from app.config import Settings
from app.engine.commands import new_id, queue_recovery, register_run, stop_run
from app.engine.context import EngineContext
from app.engine.workers import WorkerPool
from app.storage.claims import claim_due_recoveries
from app.storage.db import SessionFactory, create_engine, session_factory, transaction
from app.storage.migrate import upgrade_async
from app.storage.models import Attempt, Event, Policy, Recovery, Run, RunStatus
from app.storage.types import utcnow
from app.tinker.client import TinkerClient
from app.tinker.fake_control import FakeTinkerControl
from tests.conftest import TINKER_KEY
from tests.support.servers import ThreadedServer


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[SessionFactory]:
    await upgrade_async(database_url)
    engine = create_engine(database_url)
    yield session_factory(engine)
    await engine.dispose()


async def queued_recovery(sessions: SessionFactory, run_id: str) -> str:
    """A watched run with a recovery queued by hand; returns the recovery id."""
    async with transaction(sessions) as session:
        now = utcnow()
        policy = Policy(
            id=new_id(), name=run_id, enabled=True, created_at=now, updated_at=now
        )
        session.add(policy)
        await session.flush()
        run, _ = await register_run(session, run_id, policy, {})
        recovery = await queue_recovery(session, run, "manual")
        return recovery.id


async def until(check: object, within_s: float = 10.0) -> None:
    """Return once the coroutine function `check` returns something truthy."""
    async with asyncio.timeout(within_s):
        while not await check():  # type: ignore[operator]  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def test_a_pool_taking_back_its_own_lapsed_claim_fences_the_old_driver(
    sessions: SessionFactory, database_url: str, fake_tinker: ThreadedServer
) -> None:
    run_id = "fenced:train:0"
    with FakeTinkerControl(fake_tinker.url) as fake:
        fake.seed_run(run_id, checkpoints=["step-1"])
        fake.set_future_delay(1.0)
    settings = Settings(
        database_url=database_url,
        tinker_base_url=fake_tinker.url,
        tinker_api_key=TINKER_KEY,
        lease_ms=30_000,
        max_concurrent=2,
    )
    tinker = TinkerClient(settings.tinker_base_url, TINKER_KEY)
    pool = WorkerPool(EngineContext(settings, sessions, tinker))
    recovery_id = await queued_recovery(sessions, run_id)
    try:
        await take_back_during_restart(pool, sessions, recovery_id)
    finally:
        await pool.stop()
        await tinker.aclose()

    async with sessions() as session:
        recovery = await session.get(Recovery, recovery_id)
        events = list(
            await session.exec(select(Event).where(Event.recovery_id == recovery_id))
        )
    assert recovery is not None and recovery.status == "succeeded"
    counted = Counter(event.type for event in events)
    assert counted["client_created"] == 1, counted
    assert counted["completed"] == 1, counted


async def take_back_during_restart(
    pool: WorkerPool, sessions: SessionFactory, recovery_id: str
) -> None:
    """Claim, let the lease lapse mid-restart, claim again; wait for the end."""

    async def request_stored() -> bool:
        async with sessions() as session:
            attempt = await session.get(Attempt, (recovery_id, 1))
            return attempt is not None and attempt.request_id is not None

    assert await pool.claim() == 1
    await until(request_stored)
    # The lease lapses while the driver waits on Tinker (its renewals failed,
    # say), and the same pool claims the recovery again.
    async with transaction(sessions) as session:
        await session.exec(
            update(Recovery)
            .where(col(Recovery.id) == recovery_id)
            .values(lease_until=utcnow() - timedelta(seconds=1))
        )
    assert await pool.claim() == 1

    async def settled() -> bool:
        return not pool.active

    await until(settled)


async def test_stopping_a_run_leaves_a_recovery_claimed_meanwhile_running(
    sessions: SessionFactory,
) -> None:
    run_id = "stopped:train:0"
    recovery_id = await queued_recovery(sessions, run_id)

    async def stop() -> None:
        async with transaction(sessions) as session:
            run = await session.get(Run, run_id)
            assert run is not None
            await stop_run(session, run)

    async with transaction(sessions) as claimer:
        claimed = await claim_due_recoveries(
            claimer, utcnow(), 1, "the-worker", timedelta(seconds=30)
        )
        assert claimed == [recovery_id]
        stopping = asyncio.create_task(stop())
        # The stop reads the recovery before the claim commits.
        await asyncio.sleep(0.3)
    await stopping

    async with sessions() as session:
        recovery = await session.get(Recovery, recovery_id)
        run = await session.get(Run, run_id)
    assert recovery is not None and run is not None
    assert (recovery.status, recovery.claim_token) == ("running", "the-worker")
    assert run.status == RunStatus.stopped
