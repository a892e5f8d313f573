"""Kills while a trainer restarts its own run (`restart_mode: "trainer"`).

The service asks for the restart and stores the wait; the process is killed
while it waits, and again right after it accepted the trainer's report. The
processes that follow pick the stored wait and the stored report up.
"""

from __future__ import annotations

from collections import Counter

import httpx
import pytest

from tests.conftest import TINKER_KEY
from tests.crash.harness import (
    POLICY,
    Crash,
    FakeTinker,
    check_events,
    check_successors,
)
from tests.support.flow import fast_policy

RUN = "7d2e4f60-trainer-4a1b-9c3d-000000000001:train:0"


def trainer_restart(tinker: FakeTinker, checkpoint: str) -> str:
    """Restart from `checkpoint` on Tinker as a trainer would; the new run's id."""
    with httpx.Client(
        base_url=f"{tinker.url}/api/v1", headers={"X-API-Key": TINKER_KEY}, timeout=10
    ) as tinker_api:
        created = tinker_api.post("/create_session", json={"tags": ["trainer"]})
        session_id = created.json()["session_id"]
        body = {
            "session_id": session_id,
            "model_seq_id": 0,
            "path": checkpoint,
            "optimizer": True,
        }
        tinker_api.post("/load_weights", json=body).raise_for_status()
    return f"{session_id}:train:0"


def kill_around_the_trainer(crash: Crash) -> None:
    crash.start()
    policy = {**POLICY, "restart_mode": "trainer"}
    crash.fake.seed_run(RUN, checkpoints=["step-100", "step-200"])
    crash.watch(RUN, fast_policy(crash.api, **policy))
    crash.wait_for(
        lambda: crash.api.get(f"/runs/{RUN}").json()["last_polled_at"],
        "a first poll",
    )

    crash.fake.corrupt(RUN)
    (requested,) = crash.wait_event("restart_requested")
    crash.kill()
    new_run_id = trainer_restart(crash.tinker, requested["data"]["checkpoint"])
    crash.start()

    report = f"/recoveries/{requested['recovery_id']}/attempts/1/report"
    answer = crash.api.post(report, json={"new_run_id": new_run_id})
    assert answer.status_code == 202, answer.text
    crash.restart()

    (recovery,) = crash.wait_settled(1)
    assert recovery["status"] == "succeeded", recovery
    assert recovery["new_run_id"] == new_run_id
    check_successors(crash, [recovery])
    check_events(crash, [recovery])
    trainer_steps = Counter(
        (e["type"], e["attempt"])
        for e in crash.events("restart_requested", "restart_reported")
    )
    assert trainer_steps == {("restart_requested", 1): 1, ("restart_reported", 1): 1}
    # The trainer made the only restart; the service made none of its own.
    assert len(crash.fake.calls("load_weights")) == 1
    assert len(crash.fake.calls("create_session")) == 1


@pytest.mark.slow
def test_kills_around_a_trainer_restart_sqlite(sqlite_crash: Crash) -> None:
    kill_around_the_trainer(sqlite_crash)
