"""Reading the event log: filtered pages after an id, and the ids it holds.

Reads go through the session's connection rather than the ORM: events are
read-only here, and plain rows skip the identity map that a page of hundreds
of events, read again and again by the broker, would only fill.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.storage.models import Event

EVENTS: Table = Event.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class EventFilter:
    """Which events a reader wants: those of one run, of some types, or all."""

    run_id: str | None = None
    types: frozenset[str] | None = None

    @classmethod
    def of(cls, run_id: str | None, types: Iterable[str] | None) -> EventFilter:
        """A filter where a missing or empty list of types means every type."""
        wanted = frozenset(types or ())
        return cls(run_id=run_id, types=wanted or None)

    def matches(self, event: Event) -> bool:
        """Whether `event` passes the filter."""
        if self.run_id is not None and event.run_id != self.run_id:
            return False
        return self.types is None or event.type in self.types


EVERYTHING = EventFilter()


async def read_after(
    session: AsyncSession, after: int, limit: int, which: EventFilter = EVERYTHING
) -> list[Event]:
    """Up to `limit` events with ids above `after` that pass `which`, oldest first."""
    query = select(EVENTS).where(EVENTS.c.id > after)
    if which.run_id is not None:
        query = query.where(EVENTS.c.run_id == which.run_id)
    if which.types is not None:
        query = query.where(EVENTS.c.type.in_(sorted(which.types)))
    rows = await _run(session, query.order_by(EVENTS.c.id).limit(limit))
    return [Event(**row._mapping) for row in rows]


async def oldest_id(session: AsyncSession) -> int | None:
    """The smallest id still stored, or None when the log is empty."""
    rows = await _run(session, select(func.min(EVENTS.c.id)))
    value: int | None = rows[0][0]
    return value


async def newest_id(session: AsyncSession) -> int | None:
    """The largest id stored, or None when the log is empty."""
    rows = await _run(session, select(func.max(EVENTS.c.id)))
    value: int | None = rows[0][0]
    return value


async def _run(session: AsyncSession, query: Any) -> list[Any]:
    connection = await session.connection()
    result = await connection.execute(query)
    return list(result.all())
