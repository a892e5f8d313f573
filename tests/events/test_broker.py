"""The broker on its own: lagging, the safety-net poll, wake-ups and stopping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from app.events.broker import EventBroker, Subscription, event_id
from tests.events.conftest import EventLog


@pytest.fixture
async def broker(log: EventLog) -> AsyncIterator[EventBroker]:
    """A running broker with a tiny buffer, woken by the log's commits."""
    broker = EventBroker(
        log.sessions,
        buffer_size=2,
        poll_interval_s=30,
        dialect=log.engine.dialect.name,
    )
    log.announce_to(broker)
    await broker.start()
    yield broker
    await broker.stop()


async def take(events: Subscription, count: int, within_s: float = 10) -> list[int]:
    """The ids of the next `count` events."""
    taken: list[int] = []
    async with asyncio.timeout(within_s):
        while len(taken) < count:
            taken.append(event_id(await anext(events)))
    return taken


async def test_a_full_buffer_costs_its_reader_nothing_but_reads(
    log: EventLog, broker: EventBroker
) -> None:
    async with broker.subscribe() as idle, broker.subscribe() as busy:
        written = await log.write(20)

        assert await take(busy, 20) == written
        assert idle.lagging
        assert await take(idle, 20) == written

        more = await log.write(3)
        assert await take(idle, 3) == more
        assert not idle.lagging


async def test_a_slow_reader_misses_nothing_while_writers_go_on(
    log: EventLog, broker: EventBroker
) -> None:
    async def read_slowly(events: Subscription, count: int) -> list[int]:
        taken: list[int] = []
        async for event in events:
            taken.append(event_id(event))
            await asyncio.sleep(0.001)
            if len(taken) == count:
                return taken
        return taken

    async with broker.subscribe(after=0) as events:
        reader = asyncio.create_task(read_slowly(events, 200))
        written = await log.write_concurrently(writers=4, each=50)
        async with asyncio.timeout(20):
            assert await reader == written

    assert broker.lagged_total >= 1


async def test_the_timer_delivers_events_nobody_announced(log: EventLog) -> None:
    broker = EventBroker(
        log.sessions,
        buffer_size=10,
        poll_interval_s=0.05,
        dialect=log.engine.dialect.name,
    )
    await broker.start()
    try:
        async with broker.subscribe() as events:
            written = await log.write(3)
            assert await take(events, 3, within_s=5) == written
    finally:
        await broker.stop()


async def test_notify_works_from_another_thread(log: EventLog) -> None:
    broker = EventBroker(log.sessions, buffer_size=10, dialect=log.engine.dialect.name)
    broker.poll_interval_s = 30
    await broker.start()
    try:
        async with broker.subscribe() as events:
            written = await log.write(2)
            await asyncio.to_thread(broker.notify)
            assert await take(events, 2, within_s=5) == written
    finally:
        await broker.stop()


async def test_stop_ends_subscriptions_and_listeners(log: EventLog) -> None:
    broker = EventBroker(log.sessions, buffer_size=10, dialect=log.engine.dialect.name)
    listening = asyncio.Event()
    cancelled = asyncio.Event()

    async def listener(notify: object) -> None:
        listening.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    broker.listen(listener)
    await broker.start()
    await asyncio.wait_for(listening.wait(), 5)

    async with broker.subscribe(after=0) as events:
        waiting = asyncio.create_task(anext(events, None))
        await asyncio.sleep(0.05)
        await asyncio.wait_for(broker.stop(), 2)
        assert await asyncio.wait_for(waiting, 2) is None

    assert cancelled.is_set()
    assert broker.subscriber_count == 0
    async with broker.subscribe(after=0) as late:
        assert await asyncio.wait_for(anext(late, None), 2) is None
