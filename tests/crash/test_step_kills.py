"""Kill the service at each step of an attempt; the restarted one finishes it.

Each kill point holds the service at one moment of a recovery (right after
an event is stored, or inside a Tinker call before or after Tinker acted on
it), kills the process with SIGKILL there, starts a new one on the same
database, and checks that the recovery ends once, with one restart on
Tinker. The points are walked in one service lineage, a fresh run for each,
because starting a service process is what a crash test spends its time on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.crash.harness import POLICY, Crash, check_history
from tests.crash.holds import endpoint, run_read
from tests.support.flow import fast_policy

# Long enough to kill the process inside the call; a call the dead process
# left behind then finishes on its own, as on a real server.
FAULT_DELAY_S = 3.0
BACKOFF_MS = 2_000

Wait = Callable[[], object]


@dataclass(frozen=True)
class KillPoint:
    """Where to kill: `arm` prepares the moment and returns a wait for it."""

    name: str
    arm: Callable[[Crash], Wait]
    attempts: int = 1

    def __str__(self) -> str:
        return self.name


def after_event(type: str) -> Callable[[Crash], Wait]:
    """Kill as soon as a new event of `type` is stored."""

    def arm(crash: Crash) -> Wait:
        seen = len(crash.events(type))
        return lambda: crash.wait_event(type, seen + 1)

    return arm


def inside_call(name: str) -> Callable[[Crash], Wait]:
    """Kill while the fake holds a call before acting on it."""

    def arm(crash: Crash) -> Wait:
        seen = len(held_calls(crash, name))
        crash.fake.inject_fault(name, delay_s=FAULT_DELAY_S)
        return lambda: crash.wait_for(
            lambda: len(held_calls(crash, name)) > seen, f"a held {name} call"
        )

    return arm


def held_calls(crash: Crash, name: str) -> list[object]:
    return [call for call in crash.fake.calls(name) if call.fault]


def after_acting(name: str) -> Callable[[Crash], Wait]:
    """Kill once the fake has acted on a call but before its answer is out."""
    return lambda crash: crash.tinker.holds.hold(endpoint(name)).wait_reached


def future_pending(crash: Crash) -> Wait:
    """Kill while the service waits for the load's future."""
    seen = len(crash.fake.calls("retrieve_future"))
    crash.fake.set_future_delay(FAULT_DELAY_S)
    return lambda: crash.wait_for(
        lambda: len(crash.fake.calls("retrieve_future")) > seen, "a future poll"
    )


def backing_off(crash: Crash) -> Wait:
    """Kill while the recovery waits out the backoff after a failed attempt."""
    crash.fake.inject_fault("load_weights", status=503)
    return after_event("failed")(crash)


def verifying(crash: Crash) -> Wait:
    """Kill while the service reads the new run back, its answer held."""
    known = set(crash.tinker.created_runs(set()))
    return crash.tinker.holds.hold(run_read(known)).wait_reached


KILL_POINTS = [
    KillPoint("detected", after_event("detected")),
    KillPoint("started", after_event("started")),
    KillPoint("selecting", inside_call("list_checkpoints")),
    KillPoint("checkpoint_selected", after_event("checkpoint_selected")),
    KillPoint("create_session_sent", inside_call("create_session")),
    KillPoint("create_session_acted", after_acting("create_session")),
    KillPoint("load_weights_sent", inside_call("load_weights")),
    KillPoint("load_weights_acted", after_acting("load_weights")),
    KillPoint("future_pending", future_pending),
    KillPoint("client_created", after_event("client_created")),
    KillPoint("verifying", verifying),
    KillPoint("completed", after_event("completed")),
    KillPoint("backoff", backing_off, attempts=2),
]
# A smaller set on Postgres: between steps, and inside the load's calls.
POSTGRES_POINTS = {"started", "load_weights_acted", "future_pending", "verifying"}
POSTGRES_KILL_POINTS = [p for p in KILL_POINTS if p.name in POSTGRES_POINTS]


def kill_at_each(crash: Crash, points: list[KillPoint]) -> None:
    """Corrupt a fresh run per point, kill there, and let a new process finish."""
    crash.start()
    # A backoff long enough to kill the process in it; no other case fails.
    backoff: dict[str, Any] = {"backoff_ms": BACKOFF_MS, "max_backoff_ms": BACKOFF_MS}
    policy_id = fast_policy(crash.api, **POLICY, **backoff)
    seeded: set[str] = set()
    for number, point in enumerate(points, 1):
        began = time.monotonic()
        try:
            kill_at(crash, point, number, policy_id, seeded)
        except AssertionError as error:
            raise AssertionError(f"killed at {point}: {error}") from error
        print(f"killed at {point}, recovered in {time.monotonic() - began:.1f} s")
    assert crash.kills == len(points)


def kill_at(
    crash: Crash, point: KillPoint, number: int, policy_id: str, seeded: set[str]
) -> None:
    """Recover a fresh run through a kill at `point`, and check the history."""
    run_id = f"5a7c0e52-crash-4b1d-9d6e-{number:012d}:train:0"
    seeded.add(run_id)
    crash.fake.seed_run(run_id, checkpoints=["step-100", "step-200"])
    crash.watch(run_id, policy_id)
    crash.wait_for(
        lambda: crash.api.get(f"/runs/{run_id}").json()["last_polled_at"],
        f"a first poll of {run_id}",
    )

    wait = point.arm(crash)
    crash.fake.corrupt(run_id)
    wait()
    sessions = crash.sessions_in_use()
    crash.kill()
    crash.fake.set_future_delay(0)
    crash.start()

    crash.wait_settled(number)
    crash.wait_heartbeats(sessions)
    recovery = crash.api.get(f"/runs/{run_id}/recoveries").json()["items"][0]
    assert len(recovery["attempts"]) == point.attempts, recovery
    path = f"tinker://{run_id}/weights/step-200"
    assert recovery["attempts"][-1]["checkpoint_path"] == path
    assert crash.fake.run_state(recovery["new_run_id"]).loaded_from == path
    check_history(crash, seeded)


@pytest.mark.slow
def test_kill_at_every_step_sqlite(sqlite_crash: Crash) -> None:
    kill_at_each(sqlite_crash, KILL_POINTS)


@pytest.mark.slow
@pytest.mark.postgres
def test_kill_at_steps_postgres(postgres_crash: Crash) -> None:
    kill_at_each(postgres_crash, POSTGRES_KILL_POINTS)
