"""A service process that tests kill and restart, and the checks of what it did.

`Crash` ties one `tinker-recovery serve` process on one database to the fake
Tinker it talks to. `check_history` then reads the service's API, its event
log and the fake's call log, and asserts that every recovery ended once,
with one restart on Tinker per attempt, however often the process died.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from app.tinker.fake_control import FakeTinkerControl
from tests.conftest import TINKER_KEY
from tests.crash.holds import AnswerHolds
from tests.support.flow import wait_for
from tests.support.processes import ServiceProcess

# Each of these is written once per recovery and attempt, crashes or not.
ONCE_EVENTS = (
    "detected",
    "started",
    "checkpoint_selected",
    "client_created",
    "failed",
    "completed",
)
SETTLE_TIMEOUT_S = 40.0
# Polls every quarter second find a corruption quickly without flooding the
# fake; no attempt should ever time out, kills or not.
POLICY: dict[str, Any] = {"poll_interval_ms": 250, "attempt_timeout_ms": 60_000}


@dataclass
class FakeTinker:
    """The fake Tinker served in this process, its control and its holds."""

    url: str
    control: FakeTinkerControl
    holds: AnswerHolds

    def created_runs(self, seeded: set[str]) -> list[str]:
        """Ids of the runs that exist on the fake but were not seeded by a test."""
        response = httpx.get(
            f"{self.url}/api/v1/training_runs",
            params={"limit": 1000},
            headers={"X-API-Key": TINKER_KEY},
            timeout=10,
        )
        response.raise_for_status()
        runs = response.json()["training_runs"]
        return [
            r["training_run_id"] for r in runs if r["training_run_id"] not in seeded
        ]


def service_env(database_url: str, tinker_url: str, **extra: str) -> dict[str, str]:
    """Settings of a crash-tested service: short leases, fast loops."""
    return {
        "RECOVERY_DATABASE_URL": database_url,
        "TINKER_BASE_URL": tinker_url,
        "TINKER_API_KEY": TINKER_KEY,
        "RECOVERY_LEASE_MS": "1500",
        "RECOVERY_MONITOR_IDLE_MS": "100",
        "RECOVERY_HEARTBEAT_INTERVAL_MS": "1000",
        "RECOVERY_SHUTDOWN_GRACE_MS": "1000",
        "RECOVERY_LOG_LEVEL": "INFO",
        **extra,
    }


class Crash:
    """One service process on one database: start it, kill it, start it again."""

    def __init__(self, tinker: FakeTinker, database_url: str, log: Path, **env: str):
        self.tinker = tinker
        self.fake = tinker.control
        self.process = ServiceProcess(service_env(database_url, tinker.url, **env), log)
        self.api = httpx.Client(base_url=self.process.url, timeout=10)
        self.kills = 0
        self.started_at = datetime.now(UTC)

    def start(self) -> None:
        """Start the process; returns once it is ready."""
        self.started_at = datetime.now(UTC)
        self.process.start()
        # A fresh client: the connections of the last process died with it.
        self.api.close()
        self.api = httpx.Client(base_url=self.process.url, timeout=10)

    def kill(self) -> None:
        """Kill the process with SIGKILL, then let any held Tinker answer go."""
        self.process.kill()
        self.kills += 1
        self.tinker.holds.release_all()

    def restart(self) -> None:
        self.kill()
        self.start()

    def close(self) -> None:
        self.api.close()
        self.process.close()

    def wait_for(self, check: Any, what: str, timeout: float = SETTLE_TIMEOUT_S) -> Any:
        """`wait_for` that says what it waited for, and shows the service's log."""
        try:
            return wait_for(check, timeout=timeout, interval=0.02)
        except AssertionError as error:
            tail = self.process.log_tail(20)
            raise AssertionError(f"{what}: {error}\n{tail}") from None

    # Reading the service

    def events(self, *types: str) -> list[dict[str, Any]]:
        """Every stored event (of `types`, if given), oldest first."""
        found: list[dict[str, Any]] = []
        after = 0
        while True:
            params: dict[str, Any] = {"after": after, "limit": 1000}
            if types:
                params["type"] = list(types)
            response = self.api.get("/events", params=params)
            assert response.status_code == 200, response.text
            items = response.json()["items"]
            if not items:
                return found
            found.extend(items)
            after = items[-1]["id"]

    def wait_event(self, type: str, count: int = 1) -> list[dict[str, Any]]:
        """The events of `type`, once there are at least `count` of them."""
        found: list[dict[str, Any]] = self.wait_for(
            lambda: (found := self.events(type)) and len(found) >= count and found,
            f"{count} {type} events",
        )
        return found

    def runs(self, status: str | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": 1000}
        if status:
            params["status"] = status
        response = self.api.get("/runs", params=params)
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    def recoveries(self) -> list[dict[str, Any]]:
        """Every recovery of every run."""
        found = []
        for run in self.runs():
            response = self.api.get(f"/runs/{run['run_id']}/recoveries")
            assert response.status_code == 200, response.text
            found.extend(response.json()["items"])
        return found

    def watch(self, run_id: str, policy_id: str) -> None:
        body = {"policy_id": policy_id, "metadata": {"suite": "crash"}}
        response = self.api.post(f"/runs/{run_id}/monitor", json=body)
        assert response.status_code in (200, 201), response.text

    def settled(self, expected: int) -> list[dict[str, Any]] | None:
        """All recoveries, once there are `expected` and none is active."""
        found = self.recoveries()
        active = [r for r in found if r["status"] in ("queued", "running", "backoff")]
        return found if len(found) == expected and not active else None

    def wait_settled(self, expected: int) -> list[dict[str, Any]]:
        recoveries: list[dict[str, Any]] = self.wait_for(
            lambda: self.settled(expected), f"{expected} recoveries ended"
        )
        return recoveries

    # Sessions and heartbeats

    def sessions_in_use(self) -> set[str]:
        """Sessions the service has loaded weights into, as the fake saw them."""
        return {c.body["session_id"] for c in self.fake.calls("load_weights")}

    def wait_heartbeats(self, sessions: set[str]) -> None:
        """Every one of `sessions` gets a heartbeat from the current process."""
        since, missing = self.started_at, set(sessions)

        def beaten() -> bool:
            calls = self.fake.calls("session_heartbeat")
            missing.difference_update(
                c.body["session_id"] for c in calls if c.time >= since
            )
            return not missing

        try:
            self.wait_for(beaten, "heartbeats after the restart", 10)
        except AssertionError as error:
            raise AssertionError(f"sessions left without: {missing}; {error}") from None


def check_history(
    crash: Crash, seeded: set[str], sessions: int = 1
) -> list[dict[str, Any]]:
    """Assert that every recovery succeeded once, with one restart per attempt.

    `sessions`: how many Tinker sessions each recovery may have opened, one
    unless a test made Tinker drop a session while the service was down.
    """
    recoveries = crash.recoveries()
    assert recoveries, "no recovery happened"
    for recovery in recoveries:
        assert recovery["status"] == "succeeded", recovery
        statuses = [a["status"] for a in recovery["attempts"]]
        assert statuses[-1] == "done", recovery
        assert set(statuses[:-1]) <= {"failed"}, recovery
    check_successors(crash, recoveries)
    check_restarts(crash, recoveries, seeded, sessions)
    check_events(crash, recoveries)
    return recoveries


def check_successors(crash: Crash, recoveries: list[dict[str, Any]]) -> None:
    runs = {run["run_id"]: run for run in crash.runs()}
    for recovery in recoveries:
        old, new = runs[recovery["run_id"]], runs[recovery["new_run_id"]]
        assert old["status"] == "recovered", old
        assert old["successor_run_id"] == recovery["new_run_id"], old
        assert new["predecessor_run_id"] == old["run_id"], new


def check_restarts(
    crash: Crash, recoveries: list[dict[str, Any]], seeded: set[str], sessions: int
) -> None:
    """One key and at most one created run per attempt; `sessions` per recovery."""
    keys_by_slot: dict[tuple[str, int], set[str]] = defaultdict(set)
    for call in crash.fake.calls("load_weights"):
        assert call.idempotency_key, call
        assert call.status != 409, f"a second restart was refused: {call}"
        slot = (call.body["session_id"], call.body["model_seq_id"])
        keys_by_slot[slot].add(call.idempotency_key)
    for slot, keys in keys_by_slot.items():
        assert len(keys) == 1, f"{slot} was restarted under keys {keys}"

    # The fake names a created run after its slot, so one slot makes one run
    # at most; a run no attempt knows of would be a restart the service lost.
    new_runs = sorted(
        attempt["new_run_id"]
        for recovery in recoveries
        for attempt in recovery["attempts"]
        if attempt["new_run_id"]
    )
    assert sorted(crash.tinker.created_runs(seeded)) == new_runs
    for recovery in recoveries:
        session = recovery["new_run_id"].rsplit(":train:", 1)[0]
        used = {seq for s, seq in keys_by_slot if s == session}
        final = int(recovery["new_run_id"].rsplit(":train:", 1)[1])
        # An attempt may resend its predecessor's unanswered restart, slot and
        # key included; no slot beyond the attempts' own numbers is ever used.
        assert final in used, (recovery, used)
        assert used <= set(range(len(recovery["attempts"]))), (recovery, used)

    session_keys: dict[str, set[str]] = defaultdict(set)
    for call in crash.fake.calls("create_session"):
        assert call.idempotency_key, call
        session_keys[call.body["user_metadata"]["recovery_id"]].add(
            call.idempotency_key
        )
    assert sorted(session_keys) == sorted(r["id"] for r in recoveries)
    for recovery_id, keys in session_keys.items():
        assert len(keys) == sessions, f"{recovery_id} opened sessions {keys}"


def check_events(crash: Crash, recoveries: list[dict[str, Any]]) -> None:
    """Each step's event exactly once per recovery and attempt, in order."""
    events = crash.events()
    ids = [event["id"] for event in events]
    assert ids == sorted(set(ids)), "event ids repeat or go back"
    steps = [e for e in events if e["type"] in ONCE_EVENTS]
    counted = Counter((e["type"], e["recovery_id"], e["attempt"]) for e in steps)
    repeated = {key: n for key, n in counted.items() if n > 1}
    assert not repeated, f"events written more than once: {repeated}"
    for recovery in recoveries:
        mine = [
            (e["type"], e["attempt"])
            for e in steps
            if e["recovery_id"] == recovery["id"]
        ]
        assert mine == expected_steps(recovery), (recovery["id"], mine)
    assert not [e for e in events if e["type"] == "exhausted"]


def expected_steps(recovery: dict[str, Any]) -> list[tuple[str, int | None]]:
    """The step events a succeeded recovery has, given its attempts."""
    steps: list[tuple[str, int | None]] = [("detected", None)]
    for attempt in recovery["attempts"]:
        number = attempt["attempt"]
        steps += [("started", number), ("checkpoint_selected", number)]
        if attempt["new_run_id"]:
            steps.append(("client_created", number))
        if attempt["status"] == "failed":
            steps.append(("failed", number))
    return [*steps, ("completed", recovery["attempts"][-1]["attempt"])]
