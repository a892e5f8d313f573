"""A migrated database per test (SQLite, and Postgres when configured)."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url

from app.storage.db import SessionFactory, create_engine, session_factory
from app.storage.migrate import upgrade
from tests.support.databases import POSTGRES_URL, need_postgres
from tests.support.servers import serve
from tests.webhooks.helpers import Receiver

DEFAULT_DB = "recovery_webhooks_test"
CLEARED_TABLES = ("webhook_deliveries", "events")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once; each test works on a copy."""
    path = tmp_path_factory.mktemp("schema") / "template.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A Postgres database of this test session's own, migrated, then dropped."""
    need_postgres()
    url = make_url(POSTGRES_URL)
    base = url.database if url.database not in (None, "postgres") else DEFAULT_DB
    # A name of our own, so concurrent test sessions never share a database.
    url = url.set(database=f"{base}_{uuid.uuid4().hex[:8]}")
    asyncio.run(_admin(url, f'CREATE DATABASE "{url.database}"'))
    rendered = url.render_as_string(hide_password=False)
    try:
        upgrade(rendered)
        yield rendered
    finally:
        statement = f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'
        asyncio.run(_admin(url, statement))


async def _admin(url: URL, statement: str) -> None:
    conn = await asyncpg.connect(
        host=url.host,
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        database="postgres",
        timeout=5,
    )
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path
) -> str:
    """The URL of an empty, migrated database for one test."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    path = tmp_path / "recovery.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[SessionFactory]:
    """Sessions on the test's database, emptied of earlier tests' rows."""
    engine = create_engine(database_url)
    if engine.dialect.name == "postgresql":
        async with engine.begin() as conn:
            await conn.execute(text(f"TRUNCATE {', '.join(CLEARED_TABLES)}"))
    yield session_factory(engine)
    await engine.dispose()


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    """Start recording receivers on loopback ports; all stop after the test."""
    with ExitStack() as stack:

        def start(**options: Any) -> Receiver:
            receiver = Receiver(**options)
            server = stack.enter_context(serve(receiver.app))
            # Runs before the server stops, so no held request outlives it.
            stack.callback(receiver.release.set)
            receiver.url = server.url
            return receiver

        yield start
