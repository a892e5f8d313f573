"""The live fan-out of committed events to the clients that follow them.

One reader, woken by `notify()` after each commit that added events (and by a
timer, for wake-ups that were missed or happened in another process), reads
the new rows once and offers each to every subscription whose filter it
passes. Offering never waits: each subscription has a bounded buffer, and
when the buffer is full the subscription is marked lagging and is offered
nothing more. Once its client has drained the buffer, the subscription reads
what it missed from the table itself, then rejoins. A slow client thus costs
the others nothing and loses nothing; it only pays with reads of its own.

The seam between reading the table and being offered events is safe because
a subscription accepts offers again *before* it reads, and drops every id it
has already yielded. That needs ids to become visible in id order, which
`append_event` ensures (SQLite writes one transaction at a time; Postgres
writers take an advisory lock).

A subscription that reads from an id older than anything kept (retention
pruned the events in between) first gets a notice of type `events_pruned`,
which passes every filter. Its id is one less than the oldest event it can
still send, so it sorts between what was lost and what follows: a client
that resumes from it gets the oldest kept events and is not told about the
same loss twice. No kept event has that id, and since ids only grow, none
ever will. Reading after 0 asks for whatever is kept, and gets no notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType

from app.events.queries import EventFilter, newest_id, oldest_id, read_after
from app.storage.db import SessionFactory
from app.storage.models import Event
from app.storage.types import utcnow

logger = logging.getLogger(__name__)

PAGE_SIZE = 500
PRUNED = "events_pruned"

Listener = Callable[[Callable[[], None]], Awaitable[None]]


def event_id(event: Event) -> int:
    """The id of a stored event."""
    assert event.id is not None
    return event.id


def pruned_notice(after: int, boundary: int, oldest: int, which: EventFilter) -> Event:
    """Tell a client that events between `after` and `boundary` may be lost."""
    return Event(
        id=boundary - 1,
        type=PRUNED,
        run_id=which.run_id or "",
        time=utcnow(),
        data={
            "after": after,
            "oldest_id": oldest,
            "message": (
                f"events after {after} and before {oldest} are no longer kept; "
                "some of them may have been missed"
            ),
        },
    )


class EventBroker:
    """Reads newly committed events once and fans them out to subscriptions.

    `notify()` wakes it; `start()` and `stop()` bound its life, and `stop()`
    ends every subscription. `listen()` adds a source of wake-ups from other
    processes (a Postgres LISTEN connection, say) that runs while it does.
    """

    def __init__(
        self,
        sessions: SessionFactory,
        *,
        buffer_size: int,
        poll_interval_s: float = 1.0,
        dialect: str,
    ) -> None:
        if buffer_size < 1:
            raise ValueError("buffer_size must be at least 1")
        self.sessions = sessions
        self.buffer_size = buffer_size
        self.poll_interval_s = poll_interval_s
        self.dialect = dialect
        self.lagged_total = 0
        self._subscriptions: set[Subscription] = set()
        self._listeners: list[Listener] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._cursor: int | None = None
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = False

    @property
    def cursor(self) -> int | None:
        """The last id offered to subscriptions; None until started."""
        return self._cursor

    @property
    def subscriber_count(self) -> int:
        """How many subscriptions are open."""
        return len(self._subscriptions)

    def listen(self, listener: Listener) -> None:
        """Run `listener(self.notify)` from `start()` until `stop()`.

        The listener should call `notify` whenever events may have been
        committed elsewhere, and retry its own connection if it breaks.
        """
        if self._tasks:
            raise RuntimeError("add listeners before the broker starts")
        self._listeners.append(listener)

    def notify(self) -> None:
        """Wake the reader; cheap, and safe to call from any thread."""
        loop = self._loop
        if loop is None or self._stopped:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake.set()
            return
        # A closed loop means the service is going away; nothing to wake.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._wake.set)

    async def start(self) -> None:
        """Follow the table from its newest event; once stopped, it stays stopped."""
        if self._tasks or self._stopped:
            return
        self._loop = asyncio.get_running_loop()
        async with self.sessions() as session:
            self._cursor = await newest_id(session) or 0
        self._spawn(self._follow(), "events.broker")
        for listener in self._listeners:
            self._spawn(listener(self.notify), "events.listener")
        logger.info(
            "events.broker.started",
            extra={"cursor": self._cursor, "dialect": self.dialect},
        )

    async def stop(self) -> None:
        """Stop following the table and end every subscription."""
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for subscription in list(self._subscriptions):
            subscription.close()
        logger.info("events.broker.stopped")

    def subscribe(
        self,
        after: int | None = None,
        run_id: str | None = None,
        types: Iterable[str] | None = None,
    ) -> Subscription:
        """Events with ids above `after` (None: from now on) that pass the filter.

        Use as `async with broker.subscribe(...) as events:` then
        `async for event in events:`; leaving the block frees it at once.
        """
        return Subscription(self, after, EventFilter.of(run_id, types))

    def _spawn(self, work: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(work)
        task.set_name(name)
        task.add_done_callback(_log_failure)
        self._tasks.append(task)

    def _join(self, subscription: Subscription) -> None:
        if self._stopped:
            subscription.close()
            return
        self._subscriptions.add(subscription)
        # Everything up to the cursor has been offered already and everything
        # after it will be: a subscription starting at or after it can skip
        # the table read.
        start = subscription.last_id
        if self._cursor is not None and start is not None and start >= self._cursor:
            subscription.go_live(start)

    def _leave(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    async def _follow(self) -> None:
        while True:
            await self._wait_for_wake()
            try:
                await self._fan_out()
            except Exception:
                # The timer retries; subscriptions lose nothing meanwhile.
                logger.warning("events.broker.read_failed", exc_info=True)

    async def _wait_for_wake(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.poll_interval_s):
                await self._wake.wait()
        self._wake.clear()

    async def _fan_out(self) -> None:
        while True:
            assert self._cursor is not None
            async with self.sessions() as session:
                rows = await read_after(session, self._cursor, PAGE_SIZE)
            for row in rows:
                self._offer(row)
            if rows:
                self._cursor = event_id(rows[-1])
            if len(rows) < PAGE_SIZE:
                return

    def _offer(self, event: Event) -> None:
        for subscription in self._subscriptions:
            subscription.offer(event)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error(
            "events.broker.task_failed",
            exc_info=task.exception(),
            extra={"task": task.get_name()},
        )


class Subscription:
    """One client's view of the log: stored events after a point, then live ones."""

    def __init__(
        self, broker: EventBroker, after: int | None, which: EventFilter
    ) -> None:
        self.filter = which
        self.last_id = after
        self._broker = broker
        self._buffer: deque[Event] = deque()
        self._backlog: deque[Event] = deque()
        self._ready = asyncio.Event()
        # Until it has read the table, a subscription takes no offers.
        self._lagging = True
        self._reading = False
        self._joined = False
        self._closed = False

    @property
    def lagging(self) -> bool:
        """Whether offers are refused until the table has been read."""
        return self._lagging

    async def __aenter__(self) -> Subscription:
        self._joined = True
        self._broker._join(self)
        if self.last_id is None and not self._closed:
            # "From now on" means after the newest committed event, which the
            # broker may not have offered yet. Offers are taken before the
            # read, so whatever commits after it arrives.
            self._lagging = False
            try:
                async with self._broker.sessions() as session:
                    self.last_id = await newest_id(session) or 0
            except BaseException:
                self.close()
                raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        if not self._joined:
            raise RuntimeError("enter the subscription with `async with` first")
        while not self._closed:
            if self._reading and not self._backlog:
                await self._read_page()
                continue
            event = self._take()
            if event is not None:
                return event
            if self._lagging:
                self._rejoin()
                continue
            self._ready.clear()
            await self._ready.wait()
        raise StopAsyncIteration

    def take_ready(self, limit: int) -> list[Event]:
        """Up to `limit` further events that are ready now, without waiting."""
        ready: list[Event] = []
        while len(ready) < limit and not self._closed:
            event = self._take()
            if event is None:
                break
            ready.append(event)
        return ready

    def offer(self, event: Event) -> None:
        """Take a live event into the buffer, or start lagging if it is full."""
        if self._lagging or self._closed or not self.filter.matches(event):
            return
        if len(self._buffer) >= self._broker.buffer_size:
            self._lagging = True
            self._broker.lagged_total += 1
            logger.debug("events.subscription.lagging", extra={"id": self.last_id})
        else:
            self._buffer.append(event)
        self._ready.set()

    def go_live(self, after: int) -> None:
        """Start after `after` from offers alone, without reading the table."""
        self.last_id = after
        self._lagging = False

    def close(self) -> None:
        """End the subscription; a waiting reader stops at once."""
        self._closed = True
        self._buffer.clear()
        self._backlog.clear()
        self._ready.set()
        self._broker._leave(self)

    def _take(self) -> Event | None:
        if self._backlog:
            return self._yielded(self._backlog.popleft())
        # The buffer holds events newer than the page being read: wait for it.
        while self._buffer and not self._reading:
            event = self._buffer.popleft()
            if self.last_id is None or event_id(event) > self.last_id:
                return self._yielded(event)
        return None

    def _yielded(self, event: Event) -> Event:
        self.last_id = event_id(event)
        return event

    def _rejoin(self) -> None:
        # Offers resume before the read starts, so nothing committed from
        # here on can fall between the two.
        self._lagging = False
        self._reading = True

    async def _read_page(self) -> None:
        assert self.last_id is not None
        async with self._broker.sessions() as session:
            rows = await read_after(session, self.last_id, PAGE_SIZE, self.filter)
            # Read after the page: a prune that raced with it shows up here.
            oldest = await oldest_id(session)
        notice = self._pruned_notice(rows, oldest)
        if notice is not None:
            self._backlog.append(notice)
        self._backlog.extend(rows)
        if len(rows) < PAGE_SIZE:
            self._reading = False

    def _pruned_notice(self, rows: list[Event], oldest: int | None) -> Event | None:
        last = self.last_id
        assert last is not None
        first = event_id(rows[0]) if rows else None
        # Reading after 0 asks for whatever is kept: no loss to report.
        if last == 0 or oldest is None or oldest <= last + 1 or first == last + 1:
            return None
        # Ids below the first row in hand would arrive out of order.
        boundary = oldest if first is None else min(first, oldest)
        return pruned_notice(last, boundary, oldest, self.filter)
