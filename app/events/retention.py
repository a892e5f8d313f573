"""Retention: events older than the configured age are deleted.

The newest event is always kept, whatever its age. SQLite gives a new row the
largest id in the table plus one, so an empty table would hand out ids that
clients have already seen; keeping the newest row keeps ids growing there,
and keeps the oldest kept id meaningful for the pruned notice on Postgres too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.events.queries import EVENTS
from app.storage.db import SessionFactory, transaction
from app.storage.types import utcnow

logger = logging.getLogger(__name__)

# Small batches keep each delete's write lock short, so event writers that
# queue behind it are not held up.
BATCH_SIZE = 5_000


async def prune_events(sessions: SessionFactory, older_than: timedelta) -> int:
    """Delete events written more than `older_than` ago; return how many."""
    cutoff = utcnow() - older_than
    total = 0
    while True:
        async with transaction(sessions) as session:
            deleted = await _delete_batch(session, cutoff)
        total += deleted
        if deleted < BATCH_SIZE:
            return total


async def _delete_batch(session: AsyncSession, cutoff: datetime) -> int:
    newest = select(func.max(EVENTS.c.id)).scalar_subquery()
    doomed = (
        select(EVENTS.c.id)
        .where(EVENTS.c.time < cutoff, EVENTS.c.id < newest)
        .order_by(EVENTS.c.id)
        .limit(BATCH_SIZE)
    )
    connection = await session.connection()
    result = await connection.execute(delete(EVENTS).where(EVENTS.c.id.in_(doomed)))
    return result.rowcount


class EventPruner:
    """Prunes events past their retention now, then every `interval_s`."""

    def __init__(
        self, sessions: SessionFactory, retention_hours: float, interval_s: float
    ) -> None:
        self.sessions = sessions
        self.retention = timedelta(hours=retention_hours)
        self.interval_s = interval_s
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start pruning in the background."""
        if self._task is None:
            self._stop.clear()
            self._task = asyncio.create_task(self._run(), name="events.pruner")

    async def stop(self) -> None:
        """Stop pruning; a batch under way is cancelled and rolls back."""
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run_once(self) -> int:
        """Prune once; errors are logged, not raised, so the loop goes on."""
        try:
            deleted = await prune_events(self.sessions, self.retention)
        except Exception:
            logger.warning("events.prune.failed", exc_info=True)
            return 0
        if deleted:
            logger.info("events.pruned", extra={"deleted": deleted})
        return deleted

    async def _run(self) -> None:
        while not self._stop.is_set():
            await self.run_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval_s)
