"""A fresh database for each service: a new SQLite file or Postgres database."""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]

POSTGRES_URL = os.environ.get(
    "RECOVERY_TEST_POSTGRES_URL",
    "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres",
)
_numbers = itertools.count(1)


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _admin(statement: str) -> None:
    connection = await asyncpg.connect(_dsn(POSTGRES_URL), timeout=5)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def postgres_available() -> bool:
    """Whether the Postgres server of the tests answers."""
    try:
        asyncio.run(_admin("SELECT 1"))
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    return True


@contextmanager
def fresh_database(kind: str, folder: Path) -> Iterator[str]:
    """A new, empty database of `kind` (`sqlite` or `postgres`); yields its URL."""
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{folder}/bench-{next(_numbers)}.db"
        return
    name = f"recovery_bench_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
