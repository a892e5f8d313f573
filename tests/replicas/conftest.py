"""Replicas share one Postgres: every test here runs on Postgres only."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.databases import postgres_database


@pytest.fixture
def database_url() -> Iterator[str]:
    """A fresh Postgres database; skipped (or failed in CI) without Postgres."""
    with postgres_database() as url:
        yield url
