"""A detected corruption goes straight to a free worker of the same process."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from sqlmodel import col, select

from app.config import Settings
from app.engine import monitor as monitor_module
from app.engine.commands import new_id, register_run
from app.engine.context import EngineContext
from app.engine.monitor import Handoffs, Monitor, PollResult, record_polls
from app.engine.workers import WorkerPool
from app.storage.db import SessionFactory, create_engine, session_factory, transaction
from app.storage.migrate import upgrade_async
from app.storage.models import Event, Policy, Recovery, RecoveryStatus
from app.storage.types import utcnow
from app.tinker.fake_control import FakeTinkerControl
from app.tinker.types import TrainingRun
from tests.engine.recovery import client, seed, steps_of, wait_recovery, watch
from tests.support.flow import events_of, fast_policy, wait_for

RUN = "44444444-aaaa-4bbb-8ccc-000000000001:train:0"
OTHER = "44444444-aaaa-4bbb-8ccc-000000000002:train:0"


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[SessionFactory]:
    await upgrade_async(database_url)
    engine = create_engine(database_url)
    yield session_factory(engine)
    await engine.dispose()


async def watched(sessions: SessionFactory, run_id: str) -> None:
    async with transaction(sessions) as session:
        now = utcnow()
        policy = Policy(
            id=new_id(), name=run_id, enabled=True, created_at=now, updated_at=now
        )
        session.add(policy)
        await session.flush()
        await register_run(session, run_id, policy, {})


def corrupted(run_id: str) -> PollResult:
    run = TrainingRun(
        training_run_id=run_id,
        base_model="base",
        model_owner="owner",
        is_lora=True,
        corrupted=True,
        last_request_time=utcnow(),
    )
    return PollResult(run_id, utcnow(), run=run)


async def detect_in_one_commit(
    sessions: SessionFactory, handoffs: Handoffs
) -> tuple[Recovery, list[str]]:
    """Record a poll that saw RUN corrupted; its recovery and the new events."""
    await watched(sessions, RUN)
    async with transaction(sessions) as session:
        await record_polls(session, [corrupted(RUN)], handoffs)
    async with sessions() as session:
        recovery = (await session.exec(select(Recovery))).one()
        query = select(Event.type).where(Event.recovery_id == recovery.id)
        events = list(await session.exec(query.order_by(col(Event.id))))
    return recovery, events


async def test_a_free_worker_has_the_attempt_opened_in_the_detecting_commit(
    sessions: SessionFactory,
) -> None:
    pool = pool_of(1)
    handoffs = Handoffs(pool)
    recovery, events = await detect_in_one_commit(sessions, handoffs)
    [(recovery_id, token)] = handoffs.claimed
    assert recovery.id == recovery_id
    assert recovery.status == RecoveryStatus.running
    assert recovery.claim_token == token and recovery.lease_until is not None
    assert recovery.attempt_count == 1
    assert events == ["detected", "started"]
    assert pool.reserved == 1, "the slot stays promised until the pool adopts it"


class RolledBack(Exception):
    pass


async def test_a_detection_is_logged_only_once_it_has_committed(
    sessions: SessionFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # A process killed between the log line and the commit would otherwise
    # have said that it began an attempt which never existed.
    caplog.set_level(logging.INFO)
    said = ("monitor.corruption_detected", "recovery.attempt_started")
    await watched(sessions, RUN)
    with pytest.raises(RolledBack):
        async with transaction(sessions) as session:
            await record_polls(session, [corrupted(RUN)], Handoffs(pool_of(1)))
            assert not [r for r in caplog.records if r.getMessage() in said]
            raise RolledBack
    assert not [r for r in caplog.records if r.getMessage() in said]

    async with transaction(sessions) as session:
        await record_polls(session, [corrupted(RUN)], Handoffs(pool_of(1)))
    messages = [r.getMessage() for r in caplog.records if r.getMessage() in said]
    assert messages == list(said)


async def test_without_a_free_worker_the_recovery_is_queued(
    sessions: SessionFactory,
) -> None:
    pool = pool_of(1)
    assert pool.reserve() is not None
    handoffs = Handoffs(pool)
    recovery, events = await detect_in_one_commit(sessions, handoffs)
    assert handoffs.claimed == []
    assert recovery.status == RecoveryStatus.queued
    assert recovery.claim_token is None and recovery.attempt_count == 0
    assert events == ["detected"]


def test_with_every_worker_busy_a_detection_waits_for_a_free_one(
    make_service: Any, fake: FakeTinkerControl
) -> None:
    seed(fake, RUN, "step-100")
    seed(fake, OTHER, "step-200")
    with client(make_service(max_concurrent=1)) as api:
        policy = fast_policy(api)
        watch(api, RUN, policy)
        watch(api, OTHER, policy)
        # The only worker is kept busy restarting the first run...
        fake.inject_fault("load_weights", delay_s=2.0)
        fake.corrupt(RUN)
        wait_for(lambda: "started" in [e["type"] for e in events_of(api, RUN)])
        # ...while the second one is found corrupted.
        fake.corrupt(OTHER)
        wait_for(lambda: "detected" in [e["type"] for e in events_of(api, OTHER)])
        for run_id in (RUN, OTHER):
            assert wait_recovery(api, run_id)["status"] == "succeeded"
        first, second = steps_of(api, RUN), steps_of(api, OTHER)
    completed = next(e for e in first if e["type"] == "completed")
    detected = next(e for e in second if e["type"] == "detected")
    started = next(e for e in second if e["type"] == "started")
    assert detected["id"] < completed["id"] < started["id"]


def context(**settings: Any) -> EngineContext:
    # Nothing here reaches the database or Tinker.
    nothing: Any = None
    return EngineContext(Settings(**settings), sessions=nothing, tinker=nothing)


def pool_of(size: int) -> WorkerPool:
    return WorkerPool(context(max_concurrent=size))


def test_reserved_slots_count_against_the_pool() -> None:
    pool = pool_of(2)
    first, second = pool.reserve(), pool.reserve()
    assert first and second and first != second
    assert pool.reserve() is None
    pool.unreserve()
    assert pool.reserve() is not None
    pool.stopping.set()
    pool.unreserve()
    assert pool.reserve() is None, "a stopping pool takes nothing new"


async def test_a_write_that_fails_gives_its_reserved_slots_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool = pool_of(1)
    monitor = Monitor(context(), pool)

    @asynccontextmanager
    async def no_database(_sessions: Any) -> AsyncIterator[Any]:
        yield None

    async def claims_then_fails(
        _session: Any, _batch: list[PollResult], handoffs: Handoffs
    ) -> None:
        assert handoffs.pool is pool
        assert pool.reserve() is not None
        handoffs.claimed.append(("recovery-1", "token"))
        raise RuntimeError("the write failed")

    monkeypatch.setattr(monitor_module, "transaction", no_database)
    monkeypatch.setattr(monitor_module, "record_polls", claims_then_fails)
    with pytest.raises(RuntimeError):
        await monitor.write_batch([PollResult(RUN, utcnow())])
    assert pool.reserved == 0
    assert pool.active == {}
    assert pool.reserve() is not None
    await asyncio.sleep(0)
