"""The database engine, sessions and the few dialect-specific settings."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import Engine, event
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session
from sqlmodel.ext.asyncio.session import AsyncSession

SQLITE_BUSY_TIMEOUT_MS = 30_000
READ_ONLY = "tinker_recovery_read_only"
LOCK_TIMEOUT_MS = 15_000
IDLE_IN_TRANSACTION_MS = 60_000

SessionFactory = async_sessionmaker[AsyncSession]


def create_engine(
    url: str, *, pool_size: int = 10, lock_timeout_ms: int | None = LOCK_TIMEOUT_MS
) -> AsyncEngine:
    """Create the async engine for `url`: aiosqlite or asyncpg.

    On Postgres, a wait for a lock longer than `lock_timeout_ms` fails rather
    than hangs, and a connection left idle inside a transaction is closed by
    the server: either way the work is retried, and nothing stalls for good.
    """
    if url.startswith("sqlite"):
        engine = create_async_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    server_settings = {
        "application_name": "tinker-recovery",
        "idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_MS),
    }
    if lock_timeout_ms is not None:
        server_settings["lock_timeout"] = str(lock_timeout_ms)
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        connect_args={"server_settings": server_settings},
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # The driver's own transaction handling is turned off so that every
    # transaction starts with BEGIN IMMEDIATE (below): writers then queue on
    # the busy timeout instead of failing on a lock upgrade.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    if connection.get_execution_options().get(READ_ONLY):
        # Readers share WAL snapshots and never wait for the write lock.
        connection.exec_driver_sql("BEGIN")
    else:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def session_factory(engine: AsyncEngine) -> SessionFactory:
    """Sessions that keep loaded objects usable after commit."""
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)


def read_session_factory(engine: AsyncEngine) -> SessionFactory:
    """Sessions that only read: on SQLite they do not queue behind writers."""
    return session_factory(engine.execution_options(**{READ_ONLY: True}))


_write_locks: WeakKeyDictionary[Engine, asyncio.Lock] = WeakKeyDictionary()


def _write_lock(sessions: SessionFactory) -> asyncio.Lock | None:
    """The in-process queue of SQLite writers; None where none is needed."""
    bind = sessions.kw.get("bind")
    if not isinstance(bind, AsyncEngine) or bind.dialect.name != "sqlite":
        return None
    if bind.sync_engine.get_execution_options().get(READ_ONLY):
        return None
    # Options engines share their parent's pool, and so its queue.
    engine = getattr(bind.sync_engine, "_proxied", bind.sync_engine)
    lock = _write_locks.get(engine)
    if lock is None:
        lock = _write_locks[engine] = asyncio.Lock()
    return lock


@asynccontextmanager
async def transaction(sessions: SessionFactory) -> AsyncIterator[AsyncSession]:
    """A session whose work commits on success and rolls back on error.

    SQLite writers of one process queue here, first come first served: left to
    SQLite's busy handler, which retries at random, a writer can lose round
    after round to the others until its busy timeout runs out.
    """
    lock = _write_lock(sessions)
    queue = lock or contextlib.nullcontext()
    async with queue, sessions() as session, session.begin():
        yield session


AFTER_COMMIT_KEY = "after_commit"


def on_commit(session: AsyncSession, callback: Callable[[], None]) -> None:
    """Call `callback` once the session's transaction has committed."""
    callbacks = session.sync_session.info.setdefault(AFTER_COMMIT_KEY, [])
    if callback not in callbacks:
        callbacks.append(callback)


@event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    for callback in session.info.pop(AFTER_COMMIT_KEY, []):
        callback()


@event.listens_for(Session, "after_rollback")
def _drop_after_commit(session: Session) -> None:
    session.info.pop(AFTER_COMMIT_KEY, None)
