"""Real databases for tests: a SQLite file, and a Postgres database of our own."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg
import pytest

POSTGRES_URL = os.environ.get(
    "RECOVERY_TEST_POSTGRES_URL",
    "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres",
)
# CI sets this, so that a Postgres it cannot reach fails the run, not skips it.
POSTGRES_REQUIRED = os.environ.get("RECOVERY_TEST_REQUIRE_POSTGRES") == "1"


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def _with_database(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + name


async def _admin(statement: str) -> None:
    connection = await asyncpg.connect(_dsn(POSTGRES_URL), timeout=5)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def postgres_available() -> bool:
    try:
        asyncio.run(_admin("SELECT 1"))
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    return True


def need_postgres() -> None:
    """Skip, or fail in CI, when no Postgres can be reached."""
    if postgres_available():
        return
    message = f"PostgreSQL is not reachable at {POSTGRES_URL}"
    if POSTGRES_REQUIRED:
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def postgres_database(prefix: str = "recovery_test") -> Iterator[str]:
    """A new, empty Postgres database, dropped afterwards; yields its URL."""
    need_postgres()
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield _with_database(POSTGRES_URL, name)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def database(kind: str, folder: str) -> Iterator[str]:
    """A fresh database of `kind` (`sqlite` or `postgres`); yields its URL."""
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{folder}/recovery.db"
    else:
        with postgres_database() as url:
            yield url
