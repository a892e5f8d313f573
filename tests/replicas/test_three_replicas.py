"""Three service processes on one Postgres share the work and lose nothing.

Fifty runs are watched, twenty of them are corrupted, and one replica is
killed with SIGKILL while it holds restarts that Tinker has not finished.
Then the fake Tinker's call log shows every corrupted run restarted once,
a log of poll claims kept by the database shows no run claimed twice in one
interval (and Tinker saw no more polls than that), and an SSE client that
followed a surviving replica from the start saw the whole event log once,
in order.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from app.events.listener import asyncpg_dsn
from app.tinker.fake_control import FakeTinkerControl
from app.tinker.paths import parse_tinker_path
from tests.conftest import TINKER_KEY
from tests.replicas.streams import StreamReader
from tests.support.databases import postgres_database
from tests.support.flow import wait_for
from tests.support.processes import ServiceProcess, serve_command
from tests.support.servers import free_port

pytestmark = pytest.mark.slow

RUNS = 50
CORRUPTED = 20
INTERVAL_MS = 500
# Polls of a run that Tinker may see beyond one per interval: the first and
# last of them may reach it early or late.
POLL_SLACK = 2
FUTURE_DELAY_S = 2.0
# Three processes importing and migrating at once on a busy two-core machine.
START_S = 60.0
STEP_EVENTS = ("detected", "started", "checkpoint_selected", "client_created")


@pytest.fixture
def tinker(tmp_path: Path) -> Iterator[tuple[str, FakeTinkerControl]]:
    """The fake Tinker in a process of its own, and its control.

    Not in a thread of this one: the timing of polls is read from its call
    log, and this process's own work would hold its event loop up.
    """
    port = free_port()
    command = [*serve_command()[:-1], "fake-tinker", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with (tmp_path / "fake-tinker.log").open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=log)
    try:
        with FakeTinkerControl(url) as control:
            wait_for(lambda: answers(control), timeout=START_S)
            yield url, control
    finally:
        process.kill()
        process.wait()


def answers(control: FakeTinkerControl) -> bool:
    try:
        control.settings()
    except httpx.HTTPError:
        return False
    return True


@pytest.fixture
def replicas(
    tinker: tuple[str, FakeTinkerControl], tmp_path: Path
) -> Iterator[list[ServiceProcess]]:
    """Three `tinker-recovery serve` processes on one new Postgres database."""
    with ExitStack() as stack:
        url = stack.enter_context(postgres_database("recovery_replicas"))
        env = {
            "RECOVERY_DATABASE_URL": url,
            "TINKER_BASE_URL": tinker[0],
            "TINKER_API_KEY": TINKER_KEY,
            "RECOVERY_LEASE_MS": "1500",
            "RECOVERY_MAX_CONCURRENT": "4",
            "RECOVERY_MONITOR_IDLE_MS": "100",
            "RECOVERY_SHUTDOWN_GRACE_MS": "1000",
            "RECOVERY_SSE_KEEPALIVE_MS": "500",
            "RECOVERY_LOG_LEVEL": "INFO",
        }
        processes = [
            ServiceProcess(env, tmp_path / f"replica-{n}.log", standbys=0)
            for n in range(3)
        ]
        for process in processes:
            stack.callback(process.close)
        # Together, as a deployment starts them: they migrate one at a time.
        with ThreadPoolExecutor(len(processes)) as pool:
            list(pool.map(lambda process: process.start(START_S), processes))
        yield processes
        for process in processes:
            process.stop()


def test_three_replicas_recover_every_run_once_and_stream_every_event(
    replicas: list[ServiceProcess], tinker: tuple[str, FakeTinkerControl]
) -> None:
    started = time.monotonic()
    fake = tinker[1]
    follower, *others = replicas
    database_url = follower.env["RECOVERY_DATABASE_URL"]
    asyncio.run(log_claims(database_url))
    reader = StreamReader(follower.url, after=0).start()
    clients = [httpx.Client(base_url=r.url, timeout=10) for r in replicas]
    try:
        run_ids = watch_runs(clients, fake)
        corrupted = run_ids[:: RUNS // CORRUPTED][:CORRUPTED]
        time.sleep(4 * INTERVAL_MS / 1000)

        fake.set_future_delay(FUTURE_DELAY_S)
        for run_id in corrupted:
            fake.corrupt(run_id)
        victim = wait_for(lambda: holder_of_restarts(others, fake), timeout=20)
        victim.kill()
        in_flight = unfinished_recoveries(victim)
        assert in_flight, "the killed replica held no recovery"

        api = clients[0]
        recoveries = wait_for(lambda: settled(api, CORRUPTED), timeout=60, interval=0.2)
        events = stored_events(api)
        reader.wait_for_ids({event["id"] for event in events}, timeout=10)
    finally:
        reader.stop()
        for client in clients:
            client.close()

    assert {r["id"] for r in recoveries} >= in_flight
    check_recoveries(api_runs(follower), recoveries, corrupted)
    check_restarts(fake, recoveries, corrupted, set(run_ids))
    check_claims(database_url)
    check_polls(fake, events)
    check_events(events, recoveries)
    assert reader.error is None, reader.error
    assert [e.body for e in reader.received] == events, "the stream differs"
    assert time.monotonic() - started < 90


# Driving the replicas


def watch_runs(clients: list[httpx.Client], fake: FakeTinkerControl) -> list[str]:
    """Seed the runs on Tinker and register them, spread over the replicas."""
    policy = clients[0].post(
        "/policies",
        json={
            "name": "replicated",
            "enabled": True,
            "poll_interval_ms": INTERVAL_MS,
            "backoff_ms": 200,
            "max_backoff_ms": 1_000,
            "attempt_timeout_ms": 30_000,
        },
    )
    assert policy.status_code == 201, policy.text
    run_ids = []
    for n in range(RUNS):
        run = fake.seed_run(checkpoints=["step-100", "step-200"])
        client = clients[n % len(clients)]
        body = {"policy_id": policy.json()["id"], "metadata": {"n": n}}
        response = client.post(f"/runs/{run.training_run_id}/monitor", json=body)
        assert response.status_code == 201, response.text
        run_ids.append(run.training_run_id)
    return run_ids


STARTED = re.compile(r"recovery\.attempt_started .*recovery_id=(\S+)")
COMPLETED = re.compile(r"recovery\.completed .*recovery_id=(\S+)")


def log_matches(process: ServiceProcess, pattern: re.Pattern[str]) -> set[str]:
    return set(pattern.findall(process.log_path.read_text(errors="replace")))


def unfinished_recoveries(process: ServiceProcess) -> set[str]:
    """Recoveries the process began an attempt of and did not complete."""
    return log_matches(process, STARTED) - log_matches(process, COMPLETED)


def holder_of_restarts(
    candidates: list[ServiceProcess], fake: FakeTinkerControl
) -> ServiceProcess | None:
    """A replica with recoveries in flight, once restarts wait on Tinker."""
    if len(fake.calls("load_weights")) < 4:
        return None
    busiest = max(candidates, key=lambda p: len(unfinished_recoveries(p)))
    return busiest if len(unfinished_recoveries(busiest)) >= 2 else None


# Reading what happened


def page_all(client: httpx.Client, path: str, key: str) -> list[dict[str, Any]]:
    response = client.get(path, params={"limit": 1000})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()[key]
    return items


def api_runs(process: ServiceProcess) -> dict[str, dict[str, Any]]:
    with httpx.Client(base_url=process.url, timeout=10) as client:
        return {r["run_id"]: r for r in page_all(client, "/runs", "items")}


def settled(api: httpx.Client, expected: int) -> list[dict[str, Any]] | None:
    """Every recovery, once `expected` runs were recovered and none is active."""
    runs = page_all(api, "/runs", "items")
    recovered = [r for r in runs if r["status"] == "recovered"]
    if len(recovered) < expected or any(r["status"] == "recovering" for r in runs):
        return None
    found: list[dict[str, Any]] = []
    for run in recovered:
        found.extend(page_all(api, f"/runs/{run['run_id']}/recoveries", "items"))
    return found


def stored_events(api: httpx.Client) -> list[dict[str, Any]]:
    """The whole event log, oldest first."""
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        response = api.get("/events", params={"after": after, "limit": 1000})
        assert response.status_code == 200, response.text
        items = response.json()["items"]
        if not items:
            return events
        events.extend(items)
        after = items[-1]["id"]


def moment(text: str) -> datetime:
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


# The checks


def check_recoveries(
    runs: dict[str, dict[str, Any]],
    recoveries: list[dict[str, Any]],
    corrupted: list[str],
) -> None:
    """One successful recovery per corrupted run, and its successor watched."""
    assert sorted(r["run_id"] for r in recoveries) == sorted(corrupted)
    for recovery in recoveries:
        assert recovery["status"] == "succeeded", recovery
        assert [a["status"] for a in recovery["attempts"]] == ["done"], recovery
        old, new = runs[recovery["run_id"]], runs[recovery["new_run_id"]]
        assert old["status"] == "recovered", old
        assert old["successor_run_id"] == new["run_id"]
        assert new["predecessor_run_id"] == old["run_id"]
        assert new["status"] == "monitoring", new
    assert len(runs) == RUNS + CORRUPTED


def check_restarts(
    fake: FakeTinkerControl,
    recoveries: list[dict[str, Any]],
    corrupted: list[str],
    seeded: set[str],
) -> None:
    """One idempotency key per attempt and per source run; twenty new runs."""
    calls = fake.calls("load_weights")
    keys_by_source: dict[str, set[str]] = defaultdict(set)
    slots_by_key: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for call in calls:
        assert call.idempotency_key, call
        assert call.status != 409, f"a second restart was refused: {call}"
        source = parse_tinker_path(call.body["path"]).run_id
        keys_by_source[source].add(call.idempotency_key)
        slot = (call.body["session_id"], call.body["model_seq_id"])
        slots_by_key[call.idempotency_key].add(slot)
    assert sorted(keys_by_source) == sorted(corrupted)
    twice = {run: keys for run, keys in keys_by_source.items() if len(keys) > 1}
    assert not twice, f"runs restarted more than once: {twice}"
    assert all(len(slots) == 1 for slots in slots_by_key.values()), slots_by_key

    successors = sorted(r["new_run_id"] for r in recoveries)
    created = sorted(
        f"{session}:train:{seq}"
        for slots in slots_by_key.values()
        for session, seq in slots
    )
    assert created == successors
    assert len(set(successors)) == CORRUPTED
    assert not set(successors) & seeded


def check_polls(fake: FakeTinkerControl, events: list[dict[str, Any]]) -> None:
    """Tinker saw no more polls of a run than one per interval it was watched.

    Spacing is checked on the claims (`check_claims`): the time a request
    reaches Tinker also varies with how busy the machine is.
    """
    watched_since = {
        e["run_id"]: moment(e["time"])
        for e in events
        if e["type"] == "monitoring_started"
    }
    polls: dict[str, list[datetime]] = defaultdict(list)
    for call in fake.calls("get_training_run"):
        # A successor is read once by the recovery that made it before it is
        # watched; that read is no poll.
        assert call.run_id is not None
        if call.time >= watched_since[call.run_id]:
            polls[call.run_id].append(call.time)
    assert len(polls) == RUNS + CORRUPTED
    interval = timedelta(milliseconds=INTERVAL_MS)
    for run_id, times in polls.items():
        allowed = (times[-1] - times[0]) / interval + 1 + POLL_SLACK
        assert len(times) <= allowed, f"{run_id} was polled {len(times)} times"
    assert sum(len(times) for times in polls.values()) > 5 * RUNS


CLAIM_LOG = """
CREATE TABLE poll_claims (
    seq bigserial PRIMARY KEY, run_id text NOT NULL, next_poll_at timestamptz
);
CREATE FUNCTION log_poll_claim() RETURNS trigger AS $$
BEGIN
    INSERT INTO poll_claims (run_id, next_poll_at)
    VALUES (NEW.run_id, NEW.next_poll_at);
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER poll_claims AFTER UPDATE OF next_poll_at ON runs FOR EACH ROW
    WHEN (NEW.next_poll_at IS NOT NULL) EXECUTE FUNCTION log_poll_claim();
"""


async def log_claims(database_url: str) -> None:
    """Record in the database every move of a run's poll schedule."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await connection.execute(CLAIM_LOG)
    finally:
        await connection.close()


async def logged_claims(database_url: str) -> list[tuple[str, datetime]]:
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        rows = await connection.fetch(
            "SELECT run_id, next_poll_at FROM poll_claims ORDER BY seq"
        )
    finally:
        await connection.close()
    return [(row["run_id"], row["next_poll_at"]) for row in rows]


def check_claims(database_url: str) -> None:
    """Each claim of a run moved its next poll at least one interval on."""
    claims: dict[str, list[datetime]] = defaultdict(list)
    for run_id, next_poll_at in asyncio.run(logged_claims(database_url)):
        claims[run_id].append(next_poll_at)
    interval = timedelta(milliseconds=INTERVAL_MS)
    close = [
        (run_id, later - earlier)
        for run_id, times in claims.items()
        for earlier, later in itertools.pairwise(times)
        if later - earlier < interval
    ]
    assert not close, f"polls claimed within one interval: {close[:5]}"
    assert sum(len(times) for times in claims.values()) > 5 * RUNS


def check_events(
    events: list[dict[str, Any]], recoveries: list[dict[str, Any]]
) -> None:
    """Ids only grow; each step of each recovery is written once, in order."""
    ids = [event["id"] for event in events]
    assert ids == sorted(set(ids)), "event ids repeat or go back"
    steps = [e for e in events if e["type"] in (*STEP_EVENTS, "completed")]
    counted = Counter((e["type"], e["recovery_id"], e["attempt"]) for e in steps)
    repeated = {key: n for key, n in counted.items() if n > 1}
    assert not repeated, f"events written more than once: {repeated}"
    for recovery in recoveries:
        mine = [e["type"] for e in steps if e["recovery_id"] == recovery["id"]]
        assert mine == [*STEP_EVENTS, "completed"], (recovery["id"], mine)
    assert not [e for e in events if e["type"] in ("failed", "exhausted")]
