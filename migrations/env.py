"""Alembic environment: runs the migrations on the service's async engine."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from app.storage import models  # noqa: F401  (registers the tables)
from app.storage.db import create_engine

# Any constant works; every process that migrates must use the same one.
MIGRATION_LOCK = 7_401_118
config = context.config
target_metadata = SQLModel.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Replicas that start together migrate one at a time: the others
            # wait here, then find the schema current.
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK}
            )
        context.run_migrations()


async def _run_online() -> None:
    # No lock timeout: a replica waits for another's migration however long.
    url = config.get_main_option("sqlalchemy.url") or ""
    engine = create_engine(url, lock_timeout_ms=None)
    async with engine.connect() as connection:
        await connection.run_sync(_run)
        await connection.commit()
    await engine.dispose()


if context.is_offline_mode():
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online())
