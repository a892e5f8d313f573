"""The parts of the benchmark; each starts the services it needs and reports."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.databases import fresh_database
from benchmarks.http import (
    Samples,
    create_policy,
    metrics,
    newest_event_id,
    parse_time,
    poll_loop,
    read_events,
    register_runs,
    seed_runs,
    send,
    session,
)
from benchmarks.procs import API_KEY, Child, start_service
from benchmarks.profiles import Profile
from benchmarks.stats import counter_total, histogram, quantile, sample_sum

ROOT = Path(__file__).resolve().parent.parent
LATENESS = "recovery_poll_lateness_seconds"
BATCH = "recovery_poll_write_batch_size"


@dataclass
class Bench:
    """What every part shares: sizes, the fake, the database kind, a folder."""

    profile: Profile
    fake: Child
    database: str
    folder: Path
    run_ids: list[str]

    def env(self, database_url: str) -> dict[str, str]:
        p = self.profile
        return {
            "RECOVERY_DATABASE_URL": database_url,
            "RECOVERY_HOST": "127.0.0.1",
            "TINKER_BASE_URL": self.fake.url,
            "TINKER_API_KEY": API_KEY,
            "RECOVERY_POLL_CONCURRENCY": str(p.poll_concurrency),
            "RECOVERY_TINKER_MAX_CONNECTIONS": str(p.poll_concurrency),
            "RECOVERY_MAX_CONCURRENT": str(p.max_concurrent),
            "RECOVERY_LOG_LEVEL": "WARNING",
        }

    @contextmanager
    def service(self, name: str) -> Iterator[Child]:
        """A service of its own on a fresh database."""
        with fresh_database(self.database, self.folder) as url:
            child = start_service(f"{name}-{self.database}", self.folder, self.env(url))
            try:
                yield child
            finally:
                child.stop()


def seed_fake(fake: Child, run_ids: list[str]) -> float:
    """Create the runs on the fake; seconds it took."""

    async def seed() -> None:
        async with session(fake.url, 32) as http:
            await seed_runs(http, run_ids)

    began = time.perf_counter()
    asyncio.run(seed())
    return time.perf_counter() - began


# 1. Poll throughput


def throughput(bench: Bench) -> dict[str, Any]:
    """Polls per second of the service beside a bare aiohttp loop."""
    p = bench.profile
    baseline = asyncio.run(
        poll_loop(
            bench.fake.url, bench.run_ids, p.poll_concurrency, p.throughput_window_s
        )
    )
    with bench.service("throughput") as service:
        sizes = asyncio.run(_throughput_sizes(bench, service))
    for row in sizes:
        row["ratio"] = row["service_polls_per_s"] / baseline
    return {
        "poll_concurrency": p.poll_concurrency,
        "interval_ms": p.throughput_interval_ms,
        "window_s": p.throughput_window_s,
        "baseline_polls_per_s": baseline,
        "sizes": sizes,
    }


async def _throughput_sizes(bench: Bench, service: Child) -> list[dict[str, Any]]:
    p = bench.profile
    rows = []
    async with session(service.url) as api:
        policy = await create_policy(api, "bench-throughput", p.throughput_interval_ms)
        watched = 0
        for size in p.throughput_runs:
            began = time.perf_counter()
            refused = await register_runs(api, bench.run_ids[watched:size], policy)
            registering_s = time.perf_counter() - began
            registered, watched = size - watched, size
            await asyncio.sleep(p.throughput_warmup_s)
            before, cpu_before = await metrics(api), service.cpu_seconds()
            began = time.perf_counter()
            await asyncio.sleep(p.throughput_window_s)
            after, cpu_after = await metrics(api), service.cpu_seconds()
            elapsed = time.perf_counter() - began
            polls = counter_total(after, "recovery_polls") - counter_total(
                before, "recovery_polls"
            )
            rows.append(
                {
                    "watched_runs": size,
                    "registrations_refused": refused,
                    "registrations_per_s": registered / registering_s,
                    "service_polls_per_s": polls / elapsed,
                    "service_cpu_percent": 100 * (cpu_after - cpu_before) / elapsed,
                }
            )
    return rows


# 2, 3 and 5. Poll lag at scale, dispatch latency, memory


def lag(bench: Bench) -> dict[str, Any]:
    """Lateness of polls, corruption-to-start latency, CPU and memory at scale."""
    with bench.service("lag") as service:
        return asyncio.run(_lag(bench, service))


async def _lag(bench: Bench, service: Child) -> dict[str, Any]:
    p = bench.profile
    run_ids = bench.run_ids[: p.lag_runs]
    step = max(len(run_ids) // p.corruptions, 1)
    corrupted = run_ids[::step][: p.corruptions]
    async with session(service.url) as api, session(bench.fake.url) as fake:
        policy = await create_policy(api, "bench-lag", p.lag_interval_ms)
        began = time.perf_counter()
        refused = await register_runs(api, run_ids, policy)
        registration_s = time.perf_counter() - began
        await asyncio.sleep(p.lag_warmup_s)
        await send(fake, "DELETE", "/_fake/calls")
        window = await _watch(api, fake, service, corrupted, p)
        await _wait_started(api, len(corrupted), p.dispatch_wait_s)
        calls = await send(fake, "GET", "/_fake/calls?endpoint=get_training_run")
        events = await read_events(api, ["detected", "started"])
    lateness = _lateness(calls, set(corrupted), window, p.lag_interval_ms)
    hist = window.pop("histogram")
    return {
        "lag": {
            "watched_runs": len(run_ids),
            "interval_ms": p.lag_interval_ms,
            "registration_s": registration_s,
            "registrations_refused": refused,
            "registrations_per_s": len(run_ids) / registration_s,
            "window_s": window["seconds"],
            "polls": len(lateness),
            "lateness_p50_s": quantile(lateness, 0.5),
            "lateness_p99_s": quantile(lateness, 0.99),
            "lateness_max_s": max(lateness),
            "histogram_p50_s": hist.quantile(0.5),
            "histogram_p99_s": hist.quantile(0.99),
            "service_cpu_percent": window["cpu_percent"],
            "polls_per_write_transaction": window["polls_per_write"],
        },
        "dispatch": _dispatch(calls, events, corrupted),
        "memory": {
            "watched_runs": len(run_ids),
            "rss_mib": window["rss_mib"],
            "rss_max_mib": window["rss_max_mib"],
        },
    }


async def _watch(
    api: aiohttp.ClientSession,
    fake: aiohttp.ClientSession,
    service: Child,
    corrupted: list[str],
    p: Profile,
) -> dict[str, Any]:
    before, cpu_before = await metrics(api), service.cpu_seconds()
    began_wall, began = time.time(), time.perf_counter()
    corrupting = asyncio.create_task(_corrupt(fake, corrupted, p.corruption_spacing_s))
    rss_max = service.rss_mib()
    while time.perf_counter() - began < p.lag_window_s:
        await asyncio.sleep(min(1.0, p.lag_window_s / 4))
        rss_max = max(rss_max, service.rss_mib())
    await corrupting
    after, cpu_after = await metrics(api), service.cpu_seconds()
    elapsed = time.perf_counter() - began
    return {
        "start": began_wall,
        "end": began_wall + elapsed,
        "seconds": elapsed,
        "cpu_percent": 100 * (cpu_after - cpu_before) / elapsed,
        "rss_mib": service.rss_mib(),
        "rss_max_mib": rss_max,
        "histogram": histogram(after, LATENESS).minus(histogram(before, LATENESS)),
        "polls_per_write": _mean_change(before, after, BATCH),
    }


def _mean_change(before: Samples, after: Samples, name: str) -> float:
    """The mean of a histogram's observations between two readings."""
    count = sample_sum(after, f"{name}_count") - sample_sum(before, f"{name}_count")
    total = sample_sum(after, f"{name}_sum") - sample_sum(before, f"{name}_sum")
    return total / count if count else 0.0


async def _corrupt(
    fake: aiohttp.ClientSession, run_ids: list[str], spacing_s: float
) -> None:
    for run_id in run_ids:
        await send(fake, "POST", f"/_fake/runs/{run_id}/corrupt")
        await asyncio.sleep(spacing_s)


async def _wait_started(api: aiohttp.ClientSession, count: int, limit_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(limit_s):
            while True:
                if len(await read_events(api, ["started"])) >= count:
                    return
                await asyncio.sleep(0.5)


def _polls_by_run(calls: list[dict[str, Any]]) -> dict[str, list[float]]:
    """The times the fake logged each run's calls, oldest first."""
    polls: dict[str, list[float]] = {}
    for call in calls:
        polls.setdefault(call["run_id"], []).append(parse_time(call["time"]))
    for times in polls.values():
        times.sort()
    return polls


def _lateness(
    calls: list[dict[str, Any]],
    skip: set[str],
    window: dict[str, Any],
    interval_ms: int,
) -> list[float]:
    """How late each poll in the window reached Tinker, from the fake's log.

    A claim schedules a run's next poll one interval after itself, so each
    poll is due one interval after the one before it reached Tinker (less
    the few milliseconds between a claim and its request). A run's first
    logged call has nothing before it and is not counted.
    """
    interval = interval_ms / 1000
    found = []
    for run_id, times in _polls_by_run(calls).items():
        if run_id in skip:
            continue
        for before, at in itertools.pairwise(times):
            if window["start"] <= at <= window["end"]:
                found.append(max(at - before - interval, 0.0))
    return found


def _dispatch(
    calls: list[dict[str, Any]], events: list[dict[str, Any]], corrupted: list[str]
) -> dict[str, Any]:
    """From the poll that saw the corruption to the `started` event, per run."""
    polls = _polls_by_run(calls)
    detected: dict[str, float] = {}
    started: dict[str, float] = {}
    for event in events:
        found = detected if event["type"] == "detected" else started
        found.setdefault(event["run_id"], parse_time(event["time"]))
    seen, detect = [], []
    for run_id in corrupted:
        if run_id not in detected or run_id not in started:
            continue
        poll = max(t for t in polls.get(run_id, [0.0]) if t <= detected[run_id])
        seen.append(started[run_id] - poll)
        detect.append(started[run_id] - detected[run_id])
    return {
        "corruptions": len(corrupted),
        "measured": len(seen),
        "poll_to_started_p50_ms": 1000 * quantile(seen, 0.5) if seen else None,
        "poll_to_started_p99_ms": 1000 * quantile(seen, 0.99) if seen else None,
        "detected_to_started_p50_ms": 1000 * quantile(detect, 0.5) if seen else None,
        "detected_to_started_p99_ms": 1000 * quantile(detect, 0.99) if seen else None,
    }


# 4. Fan-out


def fanout(bench: Bench) -> dict[str, Any]:
    """Event commit to arrival at every one of many SSE subscribers."""
    p = bench.profile
    run_ids = [f"bench-fanout-{i}" for i in range(p.fanout_warmup + p.fanout_events)]
    seed_fake(bench.fake, run_ids)
    with bench.service("fanout") as service:
        return asyncio.run(_fanout(bench, service, run_ids))


async def _fanout(bench: Bench, service: Child, run_ids: list[str]) -> dict[str, Any]:
    p = bench.profile
    async with session(service.url) as api:
        policy = await create_policy(api, "bench-fanout", 3_600_000)
        await asyncio.sleep(0.5)
        rss_before = service.rss_mib()
        share = p.subscribers // p.subscriber_processes
        processes = [
            _subscribers(service, share, bench.folder / f"subscribers-{i}.json")
            for i in range(p.subscriber_processes)
        ]
        try:
            for process, _ in processes:
                await _ready(process)
            await asyncio.sleep(1.0)
            rss_after = service.rss_mib()
            # A few events first, not measured: connecting every subscriber at
            # once leaves the collector a debt that the first events would pay.
            warmup, measured = run_ids[: p.fanout_warmup], run_ids[p.fanout_warmup :]
            await _register_spaced(api, warmup, policy, p.fanout_spacing_s)
            await asyncio.sleep(2.0)
            after = await newest_event_id(api)
            await _register_spaced(api, measured, policy, p.fanout_spacing_s)
            await asyncio.sleep(2.0)
        finally:
            results = [_finish(process, out) for process, out in processes]
        emitted = {event["id"] for event in await read_events(api, [], after)}
    by_event: dict[int, list[float]] = {}
    for result in results:
        for delay, event_id in zip(result["delays_s"], result["ids"], strict=True):
            if event_id in emitted:
                by_event.setdefault(event_id, []).append(delay)
    delays = [delay for arrivals in by_event.values() for delay in arrivals]
    # The first arrival of an event says how long the service took to send it
    # at all; the rest of each event's spread is the sending to every stream.
    first = [min(arrivals) for arrivals in by_event.values()]
    subscribers = share * p.subscriber_processes
    return {
        "subscribers": subscribers,
        "events": len(emitted),
        "deliveries": len(delays),
        "expected_deliveries": len(emitted) * subscribers,
        "failed_streams": sum(result["failed"] for result in results),
        "p50_ms": 1000 * quantile(delays, 0.5),
        "p99_ms": 1000 * quantile(delays, 0.99),
        "max_ms": 1000 * max(delays),
        "first_arrival_p50_ms": 1000 * quantile(first, 0.5),
        "first_arrival_p99_ms": 1000 * quantile(first, 0.99),
        "rss_per_subscriber_kib": 1024 * (rss_after - rss_before) / subscribers,
    }


async def _register_spaced(
    api: aiohttp.ClientSession, run_ids: list[str], policy: str, spacing_s: float
) -> None:
    for run_id in run_ids:
        await send(api, "POST", f"/runs/{run_id}/monitor", {"policy_id": policy})
        await asyncio.sleep(spacing_s)


def _subscribers(
    service: Child, count: int, out: Path
) -> tuple[subprocess.Popen[str], Path]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.subscribers",
            service.url,
            str(count),
            str(out),
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    return process, out


async def _ready(process: subprocess.Popen[str]) -> None:
    assert process.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 60)
    if line.strip() != "ready":
        raise RuntimeError(f"subscribers did not start: {line!r}")


def _finish(process: subprocess.Popen[str], out: Path) -> dict[str, Any]:
    assert process.stdin is not None
    if process.poll() is None:
        process.stdin.write("stop\n")
        process.stdin.flush()
    process.wait(30)
    result: dict[str, Any] = json.loads(out.read_text())
    return result
