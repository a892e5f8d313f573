"""The Alembic migrations: up and down on both databases, and they match the models."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel

from app.storage import models  # noqa: F401  (registers the tables)
from app.storage.db import create_engine, session_factory
from app.storage.migrate import downgrade, upgrade
from app.storage.models import Policy, Recovery, Run
from app.storage.types import utcnow

TABLES = {
    "policies",
    "runs",
    "recoveries",
    "attempts",
    "events",
    "tinker_sessions",
    "webhook_deliveries",
}


async def inspect_database(url: str) -> tuple[set[str], list[Any]]:
    engine = create_engine(url)
    async with engine.connect() as connection:
        tables = await connection.run_sync(
            lambda sync: set(inspect(sync).get_table_names())
        )
        differences = await connection.run_sync(
            lambda sync: compare_metadata(
                MigrationContext.configure(sync, opts={"compare_type": True}),
                SQLModel.metadata,
            )
        )
    await engine.dispose()
    return tables - {"alembic_version"}, differences


def test_upgrade_downgrade_upgrade(database_url: str) -> None:
    upgrade(database_url)
    tables, differences = asyncio.run(inspect_database(database_url))
    assert tables == TABLES
    assert differences == []

    downgrade(database_url)
    assert asyncio.run(inspect_database(database_url))[0] == set()

    upgrade(database_url)
    assert asyncio.run(inspect_database(database_url))[0] == TABLES


async def second_active_recovery(url: str) -> None:
    engine = create_engine(url)
    sessions = session_factory(engine)
    now = utcnow()
    try:
        async with sessions() as session, session.begin():
            session.add(Policy(id="p", name="p", created_at=now, updated_at=now))
            await session.flush()
            session.add(Run(run_id="r", policy_id="p", created_at=now, updated_at=now))
            await session.flush()
            for index, status in enumerate(("succeeded", "queued")):
                session.add(
                    Recovery(
                        id=f"done-{index}",
                        run_id="r",
                        trigger="detected",
                        status=status,
                        created_at=now,
                        updated_at=now,
                    )
                )
        async with sessions() as session, session.begin():
            session.add(
                Recovery(
                    id="second",
                    run_id="r",
                    trigger="manual",
                    status="backoff",
                    created_at=now,
                    updated_at=now,
                )
            )
    finally:
        await engine.dispose()


def test_database_forbids_a_second_active_recovery(database_url: str) -> None:
    upgrade(database_url)
    with pytest.raises(IntegrityError):
        asyncio.run(second_active_recovery(database_url))
