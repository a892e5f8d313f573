"""Databases, a served events router, writers of events and SSE readers."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
from fastapi import FastAPI
from httpx_sse import ServerSentEvent, aconnect_sse
from sqlalchemy import text
from sqlalchemy.engine import make_url

from app.config import Settings
from app.events.broker import EventBroker
from app.events.store import append_event, set_notifier
from app.storage.db import create_engine, session_factory, transaction
from app.storage.migrate import upgrade
from tests.events.service import build_app
from tests.support.databases import POSTGRES_URL, need_postgres
from tests.support.servers import ThreadedServer, serve

POSTGRES_DATABASE = "recovery_events_test"


def _admin_dsn(url: str) -> str:
    admin = make_url(url).set(drivername="postgresql", database="postgres")
    return admin.render_as_string(hide_password=False)


async def _recreate_postgres(url: str) -> None:
    connection = await asyncpg.connect(_admin_dsn(url), timeout=10)
    try:
        await connection.execute(
            f"DROP DATABASE IF EXISTS {POSTGRES_DATABASE} WITH (FORCE)"
        )
        await connection.execute(f"CREATE DATABASE {POSTGRES_DATABASE}")
        # Commits still become visible in the same order; they just do not
        # wait for the disk, which a throwaway database does not need.
        await connection.execute(
            f"ALTER DATABASE {POSTGRES_DATABASE} SET synchronous_commit = off"
        )
    finally:
        await connection.close()


@pytest.fixture(
    scope="session",
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def migrated_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """A database of each kind, migrated once for the whole session."""
    if request.param == "sqlite":
        folder = tmp_path_factory.mktemp("events")
        url = f"sqlite+aiosqlite:///{folder}/events.db"
    else:
        need_postgres()
        asyncio.run(_recreate_postgres(POSTGRES_URL))
        ours = make_url(POSTGRES_URL).set(database=POSTGRES_DATABASE)
        url = ours.render_as_string(hide_password=False)
    upgrade(url)
    return url


@dataclass
class EventLog:
    """Writes events the way the service does, into a database of the test's."""

    url: str
    engine: Any = None
    sessions: Any = None

    async def open(self) -> None:
        self.engine = create_engine(self.url)
        self.sessions = session_factory(self.engine)
        # Each test starts from an empty log whose ids start again at 1.
        wipe = (
            "DELETE FROM events"
            if self.engine.dialect.name == "sqlite"
            else "TRUNCATE events RESTART IDENTITY"
        )
        await self.sql(wipe)

    async def close(self) -> None:
        set_notifier(self.engine, None)
        await self.engine.dispose()

    def announce_to(self, broker: EventBroker) -> None:
        """Wake `broker` after each commit, as a LISTEN source would."""
        set_notifier(self.engine, broker)

    async def write(
        self,
        count: int = 1,
        *,
        run_id: str = "run-a",
        type: str = "detected",
        data: dict[str, Any] | None = None,
    ) -> list[int]:
        """Write `count` events, one transaction each; return their ids."""
        ids = []
        for _ in range(count):
            async with transaction(self.sessions) as session:
                row = await append_event(session, type, run_id, data=data)
            assert row.id is not None
            ids.append(row.id)
        return ids

    async def write_concurrently(
        self, writers: int, each: int, **fields: Any
    ) -> list[int]:
        """Write `writers * each` events from concurrent tasks; return sorted ids."""
        batches = await asyncio.gather(
            *(self.write(each, **fields) for _ in range(writers))
        )
        return sorted(i for batch in batches for i in batch)

    async def age(self, up_to_id: int, when: datetime) -> None:
        """Pretend the events up to `up_to_id` were written at `when`."""
        await self.sql(
            "UPDATE events SET time = :when WHERE id <= :id",
            when=when if self.engine.dialect.name != "sqlite" else naive(when),
            id=up_to_id,
        )

    async def sql(self, statement: str, **params: Any) -> None:
        """Run one statement in a transaction of its own."""
        async with self.engine.begin() as connection:
            await connection.execute(text(statement), params)


def naive(when: datetime) -> datetime:
    """`when` in UTC without its zone, as SQLite stores times."""
    return when.astimezone(UTC).replace(tzinfo=None)


@pytest.fixture
async def log(migrated_url: str) -> AsyncIterator[EventLog]:
    """An empty event log and a writer for it."""
    event_log = EventLog(migrated_url)
    await event_log.open()
    yield event_log
    await event_log.close()


@dataclass
class Service:
    """The events router served on a loopback port."""

    server: ThreadedServer
    app: FastAPI

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def broker(self) -> EventBroker:
        broker: EventBroker = self.app.state.runtime.broker
        return broker

    def run(self, work: Any, timeout: float = 10) -> Any:
        """Run a coroutine on the server's event loop and wait for it."""
        loop = self.app.state.runtime.loop
        return asyncio.run_coroutine_threadsafe(work, loop).result(timeout)


Starter = Callable[..., Service]


@pytest.fixture
def start_service(log: EventLog) -> Iterator[Starter]:
    """Start the router over the test's log; settings may be overridden."""
    with ExitStack() as stack:

        def start(poll_interval_s: float = 1.0, **overrides: Any) -> Service:
            settings = Settings(database_url=log.url, **overrides)
            app = build_app(settings, poll_interval_s=poll_interval_s)
            service = Service(stack.enter_context(serve(app)), app)
            log.announce_to(service.broker)
            return service

        yield start


@pytest.fixture
def service(start_service: Starter) -> Service:
    """The router with default settings."""
    return start_service()


@pytest.fixture
async def client(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the served router, with room for many streams."""
    async with http_client(service.url) as client:
        yield client


@asynccontextmanager
async def http_client(url: str, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(
        base_url=url, timeout=httpx.Timeout(10, read=30), limits=limits, **options
    ) as client:
        yield client


@dataclass
class Stream:
    """An open SSE stream of which the opening `retry:` message has been read."""

    messages: AsyncIterator[ServerSentEvent]
    retry: int | None
    seen: list[ServerSentEvent] = field(default_factory=list)

    async def take(self, count: int, within_s: float = 10) -> list[ServerSentEvent]:
        """The next `count` messages, waiting at most `within_s` seconds."""
        taken: list[ServerSentEvent] = []
        async with asyncio.timeout(within_s):
            while len(taken) < count:
                taken.append(await anext(self.messages))
        self.seen.extend(taken)
        return taken

    async def rest(self, within_s: float = 10) -> list[ServerSentEvent]:
        """Every message until the server ends the stream."""
        taken: list[ServerSentEvent] = []
        async with asyncio.timeout(within_s):
            async for message in self.messages:
                taken.append(message)
        self.seen.extend(taken)
        return taken


@asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient,
    params: Any = None,
    headers: dict[str, str] | None = None,
) -> AsyncIterator[Stream]:
    """Connect to `/events/stream`; once this returns, the stream is subscribed."""
    async with aconnect_sse(
        client, "GET", "/events/stream", params=params, headers=dict(headers or {})
    ) as source:
        source.response.raise_for_status()
        messages = source.aiter_sse()
        async with asyncio.timeout(10):
            opening = await anext(messages)
        assert opening.event in ("", "message") and not opening.data
        yield Stream(messages, opening.retry)


async def eventually(check: Callable[[], Awaitable[bool]], within_s: float = 5) -> None:
    """Wait until `check()` holds, trying every few milliseconds."""
    async with asyncio.timeout(within_s):
        for _ in itertools.count():
            if await check():
                return
            await asyncio.sleep(0.02)


def ids(messages: list[ServerSentEvent]) -> list[int]:
    """The ids of SSE messages, as integers."""
    return [int(message.id) for message in messages]
