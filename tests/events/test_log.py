"""GET /events: pages of stored events, filters, and refused input."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx

from tests.events.conftest import EventLog


async def test_pages_chain_through_the_whole_log(
    log: EventLog, client: httpx.AsyncClient
) -> None:
    written = await log.write(25, data={"checkpoint": None})

    seen: list[int] = []
    after = 0
    for _ in range(4):
        response = await client.get("/events", params={"after": after, "limit": 10})
        assert response.status_code == 200
        page = response.json()
        seen += [item["id"] for item in page["items"]]
        after = page["next_after"]

    assert seen == written
    assert after == written[-1]


async def test_an_event_has_the_documented_body(
    log: EventLog, client: httpx.AsyncClient
) -> None:
    [event_id] = await log.write(run_id="run:1", type="started", data={"k": [1]})

    page = (await client.get("/events")).json()

    [item] = page["items"]
    assert set(item) == {
        "id",
        "type",
        "run_id",
        "recovery_id",
        "attempt",
        "time",
        "data",
    }
    assert item["id"] == event_id
    assert item["type"] == "started"
    assert (item["run_id"], item["data"]) == ("run:1", {"k": [1]})
    assert datetime.fromisoformat(item["time"]).utcoffset() is not None


async def test_an_empty_page_keeps_the_place(
    log: EventLog, client: httpx.AsyncClient
) -> None:
    written = await log.write(3)

    page = (await client.get("/events", params={"after": written[-1]})).json()

    assert page == {"items": [], "next_after": written[-1]}


async def test_filters_by_run_and_by_repeated_types(
    log: EventLog, client: httpx.AsyncClient
) -> None:
    a_detected = await log.write(2, run_id="run-a", type="detected")
    b_started = await log.write(2, run_id="run-b", type="started")
    a_failed = await log.write(2, run_id="run-a", type="failed")
    b_completed = await log.write(1, run_id="run-b", type="completed")

    async def page_ids(params: list[tuple[str, Any]]) -> list[int]:
        response = await client.get("/events", params=params)
        assert response.status_code == 200
        return [item["id"] for item in response.json()["items"]]

    assert await page_ids([("run_id", "run-a")]) == a_detected + a_failed
    assert await page_ids([("type", "started"), ("type", "completed")]) == (
        b_started + b_completed
    )
    assert await page_ids([("run_id", "run-a"), ("type", "failed")]) == a_failed
    assert await page_ids([("run_id", "run-c")]) == []


async def test_refuses_bad_input_with_the_error_shape(
    client: httpx.AsyncClient,
) -> None:
    bad: list[dict[str, Any]] = [
        {"limit": 0},
        {"limit": 1001},
        {"after": -1},
        {"after": "x"},
        {"after": 2**64},
        {"after": "9" * 5000},
        {"run_id": "a\x00b"},
        {"type": "t" * 33},
    ]
    for params in bad:
        response = await client.get("/events", params=params)
        assert response.status_code == 422, params
        body = response.json()
        assert body["error"] == "validation_error"
        assert isinstance(body["detail"], list) and body["detail"]
