"""Poll results are written right, and cheaply however the table grew."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, text

from app.engine.monitor import PollResult, record_polls
from app.storage.db import SessionFactory, create_engine, session_factory, transaction
from app.storage.migrate import upgrade, upgrade_async
from app.storage.models import Policy, Run, RunStatus
from app.storage.types import utcnow
from app.tinker.types import Checkpoint, TrainingRun
from tests.support.databases import postgres_database

POLL_ERROR = {"code": "server_error", "message": "boom", "retryable": True}


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[SessionFactory]:
    await upgrade_async(database_url)
    engine = create_engine(database_url)
    yield session_factory(engine)
    await engine.dispose()


def run_rows(first: int, last: int) -> list[dict[str, Any]]:
    now = utcnow()
    return [
        {
            "run_id": f"run-{index:05}",
            "policy_id": "policy",
            "status": RunStatus.monitoring.value,
            "metadata_": {},
            "next_poll_at": now,
            "created_at": now,
            "updated_at": now,
        }
        for index in range(first, last)
    ]


async def add_runs(sessions: SessionFactory, first: int, last: int) -> None:
    async with transaction(sessions) as session:
        if first == 0:
            now = utcnow()
            policy = Policy(id="policy", name="p", created_at=now, updated_at=now)
            session.add(policy)
            await session.flush()
        await session.exec(insert(Run), params=run_rows(first, last))


def seen(run_id: str, at_s: float, step: int) -> PollResult:
    """A poll that saw the run, with its last checkpoint at `step`."""
    at = START + timedelta(seconds=at_s)
    checkpoint = Checkpoint(
        checkpoint_id=f"weights/step-{step}",
        checkpoint_type="training",
        time=at,
        tinker_path=f"tinker://{run_id}/weights/step-{step}",
    )
    run = TrainingRun(
        training_run_id=run_id,
        base_model="base",
        model_owner="owner",
        is_lora=True,
        last_request_time=at,
        last_checkpoint=checkpoint,
    )
    return PollResult(run_id, at, run=run)


def failed(run_id: str, at_s: float) -> PollResult:
    return PollResult(run_id, START + timedelta(seconds=at_s), error=POLL_ERROR)


START = utcnow()


async def stored(sessions: SessionFactory, run_id: str) -> Run:
    async with sessions() as session:
        run = await session.get(Run, run_id)
    assert run is not None
    return run


async def test_the_newest_poll_of_a_run_wins_within_and_across_batches(
    sessions: SessionFactory,
) -> None:
    await add_runs(sessions, 0, 3)
    first, second, third = "run-00000", "run-00001", "run-00002"
    batch = [
        seen(first, 2, step=20),
        seen(first, 1, step=10),
        seen(second, 1, step=10),
        failed(third, 1),
    ]
    async with transaction(sessions) as session:
        await record_polls(session, batch)
    # Older than what is stored: a slow poll must not undo a newer one.
    async with transaction(sessions) as session:
        await record_polls(session, [seen(second, 0, step=5)])
    # A failed poll saw nothing: the checkpoint seen before stays.
    async with transaction(sessions) as session:
        await record_polls(session, [failed(second, 3)])

    run = await stored(sessions, first)
    assert run.last_polled_at == START + timedelta(seconds=2)
    assert run.last_checkpoint is not None
    assert run.last_checkpoint["checkpoint_id"] == "weights/step-20"
    run = await stored(sessions, second)
    assert run.last_polled_at == START + timedelta(seconds=3)
    assert run.last_error == POLL_ERROR
    assert run.last_checkpoint is not None
    assert run.last_checkpoint["checkpoint_id"] == "weights/step-10"
    run = await stored(sessions, third)
    assert run.last_error == POLL_ERROR


GROWN_TO = 20_000
BATCH = 200


def spread_batch() -> list[PollResult]:
    """BATCH polls of runs spread over the whole grown table."""
    return [seen(f"run-{i:05}", 10, 1) for i in range(0, GROWN_TO, GROWN_TO // BATCH)]


async def rows_read_by_a_batch(url: str) -> int:
    """Rows of `runs` read to write one batch, after the table grew under a
    connection that had written batches while it was small."""
    # One connection throughout: what it prepared early is what it uses late.
    engine = create_engine(url, pool_size=1)
    sessions = session_factory(engine)
    try:
        await add_runs(sessions, 0, 2)
        for round in range(8):
            async with transaction(sessions) as session:
                polls = [seen("run-00000", round, 1), seen("run-00001", round, 1)]
                await record_polls(session, polls)
        await add_runs(sessions, 2, GROWN_TO)
        batch = spread_batch()
        async with transaction(sessions) as session:
            await record_polls(session, batch)
            counters = text(
                "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)"
                " FROM pg_stat_xact_user_tables WHERE relname = 'runs'"
            )
            read = int((await session.exec(counters)).one()[0])
    finally:
        await engine.dispose()
    return read


@pytest.mark.postgres
def test_a_batch_reads_the_table_at_most_about_once_after_it_grew() -> None:
    # Planned while the table was tiny, a per-row statement could find each
    # row through the status index, reading every watched run per row:
    # 200 rows x 20,000 runs. One pass over the table is 20,000.
    with postgres_database() as url:
        upgrade(url)
        read = asyncio.run(rows_read_by_a_batch(url))
    assert read <= 2 * GROWN_TO, read


async def sqlite_steps_of_a_batch(url: str) -> int:
    """Steps of SQLite's virtual machine to write one batch into a big table."""
    engine = create_engine(url, pool_size=1)
    sessions = session_factory(engine)
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    try:
        await add_runs(sessions, 0, GROWN_TO)
        batch = spread_batch()
        async with transaction(sessions) as session:
            raw = await (await session.connection()).get_raw_connection()
            driver = raw.driver_connection
            assert driver is not None
            await driver.set_progress_handler(count, 1000)
            await record_polls(session, batch)
            await driver.set_progress_handler(None, 1000)
    finally:
        await engine.dispose()
    return steps * 1000


def test_a_batch_on_sqlite_finds_each_run_by_its_key(tmp_path: Path) -> None:
    # Through the status index, SQLite would visit every watched run and scan
    # the whole batch for each: 200 x 20,000 rows. By key it is 200 lookups.
    url = f"sqlite+aiosqlite:///{tmp_path / 'polls.db'}"
    upgrade(url)
    steps = asyncio.run(sqlite_steps_of_a_batch(url))
    assert steps <= 100 * GROWN_TO, steps
