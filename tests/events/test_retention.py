"""Retention: old events are pruned, and a client resuming into the gap is told."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import httpx
import pytest

from app.events import retention
from app.events.queries import read_after
from app.events.retention import EventPruner, prune_events
from app.storage.types import utcnow
from tests.events.conftest import EventLog, eventually, ids, open_stream

LONG_AGO = timedelta(hours=3)
RETENTION = timedelta(hours=1)


async def stored_ids(log: EventLog) -> list[int]:
    async with log.sessions() as session:
        rows = await read_after(session, 0, 1000)
    return [row.id for row in rows if row.id is not None]


async def test_prunes_old_events_and_always_keeps_the_newest(log: EventLog) -> None:
    old = await log.write(5)
    recent = await log.write(3)
    await log.age(old[-1], utcnow() - LONG_AGO)

    assert await prune_events(log.sessions, RETENTION) == 5
    assert await stored_ids(log) == recent

    await log.age(recent[-1], utcnow() - LONG_AGO)
    assert await prune_events(log.sessions, RETENTION) == 2
    assert await stored_ids(log) == recent[-1:]
    # With the newest row kept, SQLite cannot hand out a used id again.
    assert await log.write(1) == [recent[-1] + 1]


async def test_prunes_in_batches(
    log: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "BATCH_SIZE", 3)
    written = await log.write(11)
    await log.age(written[-1], utcnow() - LONG_AGO)

    assert await prune_events(log.sessions, RETENTION) == 10
    assert await stored_ids(log) == written[-1:]


async def test_the_pruner_prunes_periodically_until_stopped(log: EventLog) -> None:
    pruner = EventPruner(log.sessions, retention_hours=1, interval_s=0.05)
    await pruner.start()
    try:
        written = await log.write(4)
        await log.age(written[2], utcnow() - LONG_AGO)

        async def pruned() -> bool:
            return await stored_ids(log) == written[3:]

        await eventually(pruned)
    finally:
        async with asyncio.timeout(2):
            await pruner.stop()


async def test_a_client_resuming_into_pruned_events_is_told_once(
    log: EventLog, client: httpx.AsyncClient
) -> None:
    written = await log.write(10)
    await log.age(written[5], utcnow() - LONG_AGO)
    await prune_events(log.sessions, RETENTION)
    kept = written[6:]

    headers = {"Last-Event-ID": str(written[1])}
    async with open_stream(client, {"run_id": "run-a"}, headers) as stream:
        notice, *rest = await stream.take(1 + len(kept))

    assert notice.event == "events_pruned"
    assert int(notice.id) == kept[0] - 1
    body = json.loads(notice.data)
    assert (body["type"], body["run_id"]) == ("events_pruned", "run-a")
    assert body["data"]["after"] == written[1]
    assert body["data"]["oldest_id"] == kept[0]
    assert ids(rest) == kept

    # Resuming from the notice (or from anything kept) raises no new notice.
    for resume_from in (notice.id, str(kept[0] - 1), str(kept[1])):
        headers = {"Last-Event-ID": resume_from}
        async with open_stream(client, headers=headers) as stream:
            first = (await stream.take(1))[0]
        assert first.event == "detected"
        assert int(first.id) == max(kept[0], int(resume_from) + 1)

    page = (await client.get("/events", params={"after": written[1]})).json()
    assert [item["id"] for item in page["items"]] == kept
