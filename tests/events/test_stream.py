"""GET /events/stream: resuming, filters, message format and keep-alive."""

from __future__ import annotations

import asyncio
import json

import httpx

from tests.events.conftest import (
    EventLog,
    Service,
    Starter,
    eventually,
    http_client,
    ids,
    open_stream,
)


async def test_a_message_carries_id_type_and_the_event_body(
    log: EventLog, client: httpx.AsyncClient
) -> None:
    [event_id] = await log.write(run_id="run:7", type="completed", data={"n": 1})

    async with open_stream(client, {"after": 0}) as stream:
        [message] = await stream.take(1)

    stored = (await client.get("/events")).json()["items"][0]
    assert message.id == str(event_id)
    assert message.event == "completed"
    assert json.loads(message.data) == stored
    assert stream.retry == 2000


async def test_without_a_starting_point_only_new_events_come(
    log: EventLog, client: httpx.AsyncClient
) -> None:
    await log.write(5)

    async with open_stream(client) as stream:
        fresh = await log.write(2)
        assert ids(await stream.take(2)) == fresh


async def test_after_replays_the_stored_events_then_live_ones(
    log: EventLog, client: httpx.AsyncClient
) -> None:
    stored = await log.write(10)

    async with open_stream(client, {"after": stored[4]}) as stream:
        assert ids(await stream.take(5)) == stored[5:]
        live = await log.write(3)
        assert ids(await stream.take(3)) == live


async def test_last_event_id_wins_over_after(
    log: EventLog, client: httpx.AsyncClient
) -> None:
    stored = await log.write(10)
    headers = {"Last-Event-ID": str(stored[7])}

    async with open_stream(client, {"after": stored[2]}, headers) as stream:
        assert ids(await stream.take(2)) == stored[8:]


async def test_a_client_that_drops_and_resumes_gets_every_event_once(
    log: EventLog, client: httpx.AsyncClient
) -> None:
    async def write_steadily() -> list[int]:
        written: list[int] = []
        for _ in range(30):
            written += await log.write(5)
            await asyncio.sleep(0.01)
        return written

    writer = asyncio.create_task(write_steadily())
    received: list[int] = []
    while len(received) < 150:
        # Resume the way a browser does: from the last id it saw.
        headers = {"Last-Event-ID": str(received[-1])} if received else {}
        params = {} if received else {"after": 0}
        async with open_stream(client, params, headers) as stream:
            batch = await stream.take(min(23, 150 - len(received)), within_s=20)
        received += ids(batch)
    written = await writer

    assert received == written
    async with open_stream(client, headers={"Last-Event-ID": str(received[-1])}) as s:
        live = await log.write(2)
        assert ids(await s.take(2)) == live


async def test_filters_apply_to_stored_and_live_events(
    log: EventLog, client: httpx.AsyncClient
) -> None:
    await log.write(2, run_id="run-b", type="failed")
    wanted = await log.write(2, run_id="run-a", type="failed")
    await log.write(2, run_id="run-a", type="started")
    params = [
        ("after", "0"),
        ("run_id", "run-a"),
        ("type", "failed"),
        ("type", "completed"),
    ]

    async with open_stream(client, params) as stream:
        assert ids(await stream.take(2)) == wanted
        await log.write(1, run_id="run-a", type="started")
        await log.write(1, run_id="run-b", type="completed")
        live = await log.write(1, run_id="run-a", type="completed")
        [message] = await stream.take(1)

    assert (int(message.id), message.event) == (live[0], "completed")


async def test_an_invalid_last_event_id_is_refused(client: httpx.AsyncClient) -> None:
    for value in ["abc", "-1", "1.5", str(2**64), "9" * 5000, "٣"]:
        headers = [(b"Last-Event-ID", value.encode())]
        response = await client.get("/events/stream", headers=headers)
        assert response.status_code == 422, value
        body = response.json()
        assert body["error"] == "validation_error"
        assert body["detail"][0]["loc"][-1] == "Last-Event-ID"


async def test_idle_streams_get_keep_alive_comments(
    log: EventLog, start_service: Starter
) -> None:
    service = start_service(sse_keepalive_ms=100, sse_retry_ms=1234)

    lines: list[str] = []
    async with (
        http_client(service.url) as client,
        client.stream("GET", "/events/stream") as response,
        asyncio.timeout(5),
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            lines.append(line)
            if line.startswith(":"):
                break

    assert "retry: 1234" in lines
    assert lines[-1] == ": keep-alive"


async def test_a_closed_stream_frees_its_subscription(
    log: EventLog, service: Service, client: httpx.AsyncClient
) -> None:
    async with open_stream(client), open_stream(client, {"after": 0}):
        assert service.broker.subscriber_count == 2

    async def all_gone() -> bool:
        return service.broker.subscriber_count == 0

    await eventually(all_gone)
