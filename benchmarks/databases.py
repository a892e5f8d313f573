"""A fresh database for each service: a new SQLite file or Postgres database."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.databases import postgres_available, postgres_database

__all__ = ["fresh_database", "postgres_available"]

_numbers = itertools.count(1)


@contextmanager
def fresh_database(kind: str, folder: Path) -> Iterator[str]:
    """A new, empty database of `kind` (`sqlite` or `postgres`); yields its URL."""
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{folder}/bench-{next(_numbers)}.db"
        return
    with postgres_database("recovery_bench") as url:
        yield url
