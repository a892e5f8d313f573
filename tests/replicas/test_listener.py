"""Events written by one replica reach the SSE clients of another, live.

The brokers under test read the table on a timer too; these tests stretch
that timer to a minute, so that only a Postgres notification can deliver an
event within the few seconds they wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx

from app.events.broker import EventBroker
from app.events.listener import APPLICATION_NAME, PostgresListener, asyncpg_dsn
from app.events.store import append_event
from app.storage.db import create_engine, session_factory, transaction
from app.storage.migrate import upgrade_async
from app.storage.models import Event
from app.tinker.fake_control import FakeTinkerControl
from tests.replicas.streams import StreamReader
from tests.support.flow import fast_policy, wait_for
from tests.support.servers import ThreadedServer

SLOW_TIMER_S = 60.0


async def listener_pids(database_url: str) -> set[int]:
    """Backends of the listeners connected to the test's database."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        rows = await connection.fetch(
            "SELECT pid FROM pg_stat_activity"
            " WHERE application_name = $1 AND datname = current_database()",
            APPLICATION_NAME,
        )
    finally:
        await connection.close()
    return {row["pid"] for row in rows}


async def terminate(database_url: str, pids: set[int]) -> None:
    """Kill backends as an administrator or a failover would."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        for pid in pids:
            assert await connection.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await connection.close()


def broker_of(server: ThreadedServer) -> EventBroker:
    broker: EventBroker | None = server.server.config.app.state.runtime.broker
    assert broker is not None
    return broker


def stored_ids(api: httpx.Client) -> list[int]:
    page = api.get("/events", params={"after": 0, "limit": 1000}).json()
    return [event["id"] for event in page["items"]]


def watch(api: httpx.Client, fake: FakeTinkerControl, run_id: str, policy: str) -> None:
    # A seeded, healthy run: its polls write no event, so that every event
    # of these tests is written by the API of the replica that was called.
    fake.seed_run(run_id, checkpoints=["step-1"])
    response = api.post(f"/runs/{run_id}/monitor", json={"policy_id": policy})
    assert response.status_code == 201, response.text


def test_a_stream_on_one_replica_follows_writes_on_another(
    make_service: Any, fake_tinker: ThreadedServer, database_url: str
) -> None:
    first, second = make_service(), make_service()
    broker_of(first).poll_interval_s = SLOW_TIMER_S
    reader = StreamReader(first.url).start()
    with (
        httpx.Client(base_url=second.url, timeout=10) as api,
        FakeTinkerControl(fake_tinker.url) as fake,
    ):
        policy = fast_policy(api, poll_interval_ms=60_000)
        for n in range(3):
            watch(api, fake, f"live-{n}:train:0", policy)
            reader.wait_for_ids(set(stored_ids(api)), timeout=5)

        before = asyncio.run(listener_pids(database_url))
        assert len(before) == 2, "each replica listens on a connection of its own"
        asyncio.run(terminate(database_url, before))
        for n in range(3):
            watch(api, fake, f"gap-{n}:train:0", policy)
        after = wait_for(
            lambda: len(pids := asyncio.run(listener_pids(database_url))) == 2 and pids,
            timeout=10,
        )
        assert not after & before, "the listeners came back on new connections"
        watch(api, fake, "back:train:0", policy)

        everything = stored_ids(api)
        reader.wait_for_ids(set(everything), timeout=5)
    reader.stop()
    assert len(everything) == 7
    assert reader.ids() == everything
    assert reader.error is None


class GatedListener(PostgresListener):
    """A listener whose reconnections wait until the test opens the gate."""

    def __init__(self, database_url: str) -> None:
        super().__init__(database_url, backoff_s=0.01)
        self.gate = asyncio.Event()
        self.gate.set()
        self.knocking = asyncio.Event()

    async def connect(self) -> Any:
        self.knocking.set()
        await self.gate.wait()
        return await super().connect()


@asynccontextmanager
async def following(
    database_url: str, listener: PostgresListener
) -> AsyncIterator[list[Event]]:
    """A broker on its own engine that only the listener wakes; what it yields."""
    engine = create_engine(database_url)
    broker = EventBroker(
        session_factory(engine),
        buffer_size=100,
        poll_interval_s=SLOW_TIMER_S,
        dialect="postgresql",
    )
    broker.listen(listener)
    await broker.start()
    received: list[Event] = []

    async def collect() -> None:
        async with broker.subscribe(after=0) as events:
            async for event in events:
                received.append(event)

    task = asyncio.create_task(collect())
    try:
        yield received
    finally:
        await broker.stop()
        await task
        await engine.dispose()


async def until(check: Any, within_s: float = 5.0) -> None:
    """Return once `check()` holds; fail after `within_s`."""
    async with asyncio.timeout(within_s):
        while not check():  # noqa: ASYNC110 - the checks read plain lists
            await asyncio.sleep(0.01)


async def test_a_listener_whose_connection_is_killed_misses_nothing(
    database_url: str,
) -> None:
    await upgrade_async(database_url)
    # Another replica: an engine of its own, whose commits this broker is
    # not told about.
    writer_engine = create_engine(database_url)
    writer = session_factory(writer_engine)

    async def write(count: int) -> list[int]:
        ids = []
        for n in range(count):
            async with transaction(writer) as session:
                event = await append_event(session, "monitoring_started", f"r{n}")
                ids.append(event.id)
        return ids

    listener = GatedListener(database_url)
    async with following(database_url, listener) as received:
        await until(lambda: listener.connections == 1)
        written = await write(2)
        await until(lambda: [e.id for e in received] == written)

        listener.gate.clear()
        listener.knocking.clear()
        await terminate(database_url, await listener_pids(database_url))
        await until(listener.knocking.is_set)
        while_away = await write(3)
        await asyncio.sleep(0.5)
        assert [e.id for e in received] == written, "nothing can wake it yet"

        listener.gate.set()
        await until(lambda: [e.id for e in received] == written + while_away)
        assert listener.connections == 2
        later = await write(2)
        await until(lambda: [e.id for e in received] == written + while_away + later)
    await writer_engine.dispose()
