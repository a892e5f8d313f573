"""Loopback HTTP helpers: the service's API, the fake's control API, raw polls."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any

import aiohttp

from benchmarks.procs import API_KEY
from benchmarks.stats import parse_metrics

REGISTER_TRIES = 5
REGISTER_CONCURRENCY = 32
Samples = dict[str, list[tuple[dict[str, str], float]]]


def session(base_url: str, limit: int = 64) -> aiohttp.ClientSession:
    """A client session on one loopback server, with the fake's API key."""
    # Both servers close a connection idle for 5 s (uvicorn's default); one
    # taken up again just as it closes answers with a reset. Idle ones are
    # dropped here first.
    connector = aiohttp.TCPConnector(limit=limit, keepalive_timeout=2)
    timeout = aiohttp.ClientTimeout(total=120)
    headers = {"X-Api-Key": API_KEY}
    return aiohttp.ClientSession(
        base_url, connector=connector, timeout=timeout, headers=headers
    )


async def each(
    items: Iterable[Any], work: Callable[[Any], Awaitable[None]], concurrency: int
) -> None:
    """Run `work` on every item, at most `concurrency` at a time."""
    pending = iter(items)

    async def worker() -> None:
        for item in pending:
            await work(item)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def send(
    http: aiohttp.ClientSession, method: str, path: str, body: Any = None
) -> Any:
    """One JSON request; raise on an error status, return the decoded body."""
    async with http.request(method, path, json=body) as response:
        if response.status >= 400:
            text = await response.text()
            raise RuntimeError(f"{method} {path}: {response.status} {text[:300]}")
        if response.status == 204:
            return None
        return await response.json()


async def seed_runs(fake: aiohttp.ClientSession, run_ids: list[str]) -> None:
    """Create training runs on the fake, each with one training checkpoint."""

    async def seed(run_id: str) -> None:
        body = {"run_id": run_id, "checkpoints": [{"name": "step-100"}]}
        await send(fake, "POST", "/_fake/runs", body)

    await each(run_ids, seed, 32)


async def create_policy(api: aiohttp.ClientSession, name: str, interval_ms: int) -> str:
    """An enabled policy polling every `interval_ms`; its id."""
    body = {"name": name, "enabled": True, "poll_interval_ms": interval_ms}
    created = await send(api, "POST", "/policies", body)
    return str(created["id"])


async def register_runs(
    api: aiohttp.ClientSession, run_ids: list[str], policy_id: str
) -> int:
    """Watch every run under one policy, a few at a time; the refusals retried.

    Returns how many registrations the service refused (5xx) before they
    went through, so that a report shows them instead of hiding them.
    """
    refused = 0

    async def register(run_id: str) -> None:
        nonlocal refused
        for _ in range(REGISTER_TRIES - 1):
            async with api.post(
                f"/runs/{run_id}/monitor", json={"policy_id": policy_id}
            ) as response:
                if response.status < 500:
                    response.raise_for_status()
                    return
                refused += 1
        await send(api, "POST", f"/runs/{run_id}/monitor", {"policy_id": policy_id})

    await each(run_ids, register, REGISTER_CONCURRENCY)
    return refused


async def metrics(api: aiohttp.ClientSession) -> Samples:
    """The service's Prometheus samples."""
    async with api.get("/metrics") as response:
        response.raise_for_status()
        return parse_metrics(await response.text())


async def read_events(
    api: aiohttp.ClientSession, types: list[str], after: int = 0
) -> list[dict[str, Any]]:
    """Every stored event of these types after `after`, oldest first."""
    found: list[dict[str, Any]] = []
    params: list[tuple[str, str]] = [("type", kind) for kind in types]
    while True:
        query = [*params, ("after", str(after)), ("limit", "1000")]
        async with api.get("/events", params=query) as response:
            response.raise_for_status()
            page = await response.json()
        found.extend(page["items"])
        if not page["items"]:
            return found
        after = page["next_after"]


async def newest_event_id(api: aiohttp.ClientSession) -> int:
    """The id of the newest stored event, 0 when there is none."""
    events = await read_events(api, [])
    return int(events[-1]["id"]) if events else 0


async def poll_loop(
    base_url: str, run_ids: list[str], concurrency: int, seconds: float
) -> float:
    """Raw aiohttp reads of training runs, as fast as they go; reads per second."""
    done = 0
    async with session(base_url, concurrency) as http:
        stop = time.perf_counter() + seconds

        async def worker(start: int) -> None:
            nonlocal done
            index = start
            while time.perf_counter() < stop:
                path = f"/api/v1/training_runs/{run_ids[index % len(run_ids)]}"
                async with http.get(path) as response:
                    response.raise_for_status()
                    await response.json()
                done += 1
                index += concurrency

        began = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        return done / (time.perf_counter() - began)


def parse_time(text: str) -> float:
    """Seconds since the epoch of an ISO-8601 time."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
