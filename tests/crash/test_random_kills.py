"""Kill the service at random moments while several runs recover at once.

Each round corrupts a few watched runs (the original ones, or the runs that
earlier recoveries created), waits a random time of up to 1.5 s, and kills
the process with SIGKILL, so kills land anywhere: between steps, inside
Tinker calls, in the middle of a transaction. A new process starts on the same
database each time; at the end every recovery must have succeeded exactly
once, with one restart on Tinker.
"""

from __future__ import annotations

import random
import secrets
import time

import pytest

from tests.crash.harness import POLICY, Crash, check_history
from tests.support.flow import fast_policy

MAX_DELAY_S = 1.5
RUNS = 6
PER_ROUND = 3


def kill_at_random(crash: Crash, rounds: int) -> None:
    seed = secrets.randbits(32)
    print(f"random kills, seed {seed}")
    rng = random.Random(seed)
    crash.start()
    policy_id = fast_policy(crash.api, **POLICY)
    seeded = {f"9e1f3b20-rand-4c2a-8f0d-{n:012d}:train:0" for n in range(RUNS)}
    for run_id in sorted(seeded):
        crash.fake.seed_run(run_id, checkpoints=["step-100"])
        crash.watch(run_id, policy_id)

    # run id -> the checkpoint its recovery must start from
    corrupted: dict[str, str] = {}
    for round in range(rounds):
        healthy = [r["run_id"] for r in crash.runs("monitoring")]
        healthy = sorted(set(healthy) - set(corrupted))
        for run_id in rng.sample(healthy, min(PER_ROUND, len(healthy))):
            checkpoint = crash.fake.add_checkpoint(run_id, f"round-{round}")
            corrupted[run_id] = checkpoint.tinker_path
            crash.fake.corrupt(run_id)
        time.sleep(rng.uniform(0, MAX_DELAY_S))
        sessions = crash.sessions_in_use()
        crash.restart()
        crash.wait_heartbeats(sessions)

    recoveries = crash.wait_settled(len(corrupted))
    check_history(crash, seeded)
    for recovery in recoveries:
        (attempt,) = recovery["attempts"]
        assert attempt["checkpoint_path"] == corrupted[recovery["run_id"]], recovery
    assert crash.kills == rounds


@pytest.mark.slow
def test_random_kills_sqlite(sqlite_crash: Crash) -> None:
    kill_at_random(sqlite_crash, rounds=15)


@pytest.mark.slow
@pytest.mark.postgres
def test_random_kills_postgres(postgres_crash: Crash) -> None:
    kill_at_random(postgres_crash, rounds=4)
