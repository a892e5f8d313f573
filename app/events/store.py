"""Appending events: written in the caller's transaction, announced on commit."""

from __future__ import annotations

from typing import Any, Protocol
from weakref import WeakKeyDictionary

from sqlalchemy import Engine, event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from app.storage.models import Event
from app.storage.types import utcnow

# Any constant works; it only has to be the same for every writer.
EVENT_ORDER_LOCK = 7_401_117
# Postgres channel told of every commit that added events, for other replicas.
EVENTS_CHANNEL = "recovery_events"
PENDING_KEY = "events_pending"


class EventNotifier(Protocol):
    """What hears that new events were committed."""

    def notify(self) -> None: ...


_notifiers: WeakKeyDictionary[Engine, EventNotifier] = WeakKeyDictionary()


def set_notifier(engine: AsyncEngine, notifier: EventNotifier | None) -> None:
    """Have `notifier` hear of every commit on `engine` that added events."""
    if notifier is None:
        _notifiers.pop(engine.sync_engine, None)
    else:
        _notifiers[engine.sync_engine] = notifier


async def append_event(
    session: AsyncSession,
    type: str,
    run_id: str,
    *,
    recovery_id: str | None = None,
    attempt: int | None = None,
    data: dict[str, Any] | None = None,
) -> Event:
    """Add an event to the caller's transaction; it is announced once committed."""
    if session.get_bind().dialect.name == "postgresql":
        # Ids come from a sequence when rows are inserted, but become visible
        # when transactions commit. Holding this lock until commit makes the
        # two orders agree, so a reader that has seen id N never later finds a
        # smaller id appear: resuming "after N" cannot skip an event.
        # The notification goes out when the transaction commits, and not at
        # all if it rolls back; Postgres sends one per transaction.
        # Pending writes of the caller lock their rows now, before the event
        # lock rather than while holding it, which would invite deadlocks.
        await session.flush()
        connection = await session.connection()
        await connection.execute(
            text("SELECT pg_advisory_xact_lock(:key), pg_notify(:channel, '')"),
            {"key": EVENT_ORDER_LOCK, "channel": EVENTS_CHANNEL},
        )
    row = Event(
        type=type,
        run_id=run_id,
        recovery_id=recovery_id,
        attempt=attempt,
        time=utcnow(),
        data=data or {},
    )
    session.add(row)
    await session.flush()
    session.sync_session.info[PENDING_KEY] = True
    return row


@event.listens_for(Session, "after_commit")
def _announce(session: Session) -> None:
    if not session.info.pop(PENDING_KEY, False):
        return
    bind = session.get_bind()
    engine = bind.engine if not isinstance(bind, Engine) else bind
    notifier = _notifiers.get(engine)
    if notifier is not None:
        notifier.notify()


@event.listens_for(Session, "after_rollback")
def _forget(session: Session) -> None:
    session.info.pop(PENDING_KEY, None)
