"""Recoveries started by hand, and recoveries cancelled by unregistering a run."""

from __future__ import annotations

from datetime import datetime

import httpx

from app.tinker.fake_control import FakeTinkerControl
from tests.engine.recovery import (
    data_of,
    get_run,
    recoveries,
    seed,
    steps_of,
    wait_recovery,
    watch,
)
from tests.support.flow import fast_policy, wait_for

RUN = "44444444-aaaa-4bbb-8ccc-000000000005:train:0"
BARRIER = "44444444-aaaa-4bbb-8ccc-000000000006:train:0"


def recover(api: httpx.Client, run_id: str, **body: object) -> dict[str, object]:
    response = api.post(f"/runs/{run_id}/recover", json=body or None)
    assert response.status_code == 202, response.text
    recovery: dict[str, object] = response.json()
    assert recovery["trigger"] == "manual"
    return recovery


def test_manual_recovery_of_a_healthy_run_with_overrides(
    api: httpx.Client, fake: FakeTinkerControl
) -> None:
    paths = seed(fake, RUN, "step-100", "step-200", "step-300")
    watch(api, RUN, fast_policy(api, restore_optimizer=True), {"k": "v"})
    wait_for(lambda: get_run(api, RUN)["last_polled_at"])

    queued = recover(api, RUN, checkpoint_path=paths[0], restore_optimizer=False)
    recovery = wait_recovery(api, RUN)
    assert recovery["id"] == queued["id"]
    assert recovery["status"] == "succeeded", recovery
    [attempt] = recovery["attempts"]
    assert attempt["checkpoint_path"] == paths[0]
    assert attempt["restore_optimizer"] is False
    state = fake.run_state(recovery["new_run_id"])
    assert (state.loaded_from, state.optimizer_restored) == (paths[0], False)

    steps = steps_of(api, RUN)
    assert [e["type"] for e in steps] == [
        "recovery_requested",
        "started",
        "checkpoint_selected",
        "client_created",
        "completed",
    ]
    assert data_of(steps, "completed")[0]["restore_optimizer"] is False
    assert get_run(api, RUN)["status"] == "recovered"
    new = get_run(api, recovery["new_run_id"])
    assert (new["predecessor_run_id"], new["metadata"]) == (RUN, {"k": "v"})


def test_manual_recovery_of_an_exhausted_run(
    api: httpx.Client, fake: FakeTinkerControl
) -> None:
    fake.seed_run(RUN, corrupted=True)
    watch(api, RUN, fast_policy(api))
    failed = wait_recovery(api, RUN)
    assert failed["status"] == "exhausted"
    assert get_run(api, RUN)["status"] == "exhausted"

    fake.add_checkpoint(RUN, "step-100")
    queued = recover(api, RUN)
    assert queued["id"] != failed["id"]
    recovery = wait_recovery(api, RUN)
    assert recovery["id"] == queued["id"]
    assert recovery["status"] == "succeeded", recovery
    assert recovery["attempts"][0]["checkpoint_path"].endswith("/weights/step-100")
    assert recovery["attempts"][0]["restore_optimizer"] is True
    assert [r["status"] for r in recoveries(api, RUN)] == ["succeeded", "exhausted"]
    assert get_run(api, RUN)["status"] == "recovered"


def test_manual_recovery_of_a_stopped_run(
    api: httpx.Client, fake: FakeTinkerControl
) -> None:
    paths = seed(fake, RUN, "step-100", "step-200")
    watch(api, RUN, fast_policy(api))
    assert api.delete(f"/runs/{RUN}/monitor").status_code == 204
    assert get_run(api, RUN)["status"] == "stopped"

    recover(api, RUN, restore_optimizer=False)
    recovery = wait_recovery(api, RUN)
    assert recovery["status"] == "succeeded", recovery
    assert recovery["attempts"][0]["checkpoint_path"] == paths[-1]
    state = fake.run_state(recovery["new_run_id"])
    assert (state.loaded_from, state.optimizer_restored) == (paths[-1], False)
    assert get_run(api, RUN)["status"] == "recovered"
    assert get_run(api, recovery["new_run_id"])["status"] == "monitoring"


def test_unregistering_cancels_a_recovery_in_backoff(
    api: httpx.Client, fake: FakeTinkerControl
) -> None:
    seed(fake, RUN, "step-100", corrupted=True)
    fake.inject_fault("load_weights", status=503)
    policy_id = fast_policy(api, backoff_ms=2_000, max_backoff_ms=2_000)
    watch(api, RUN, policy_id)
    waiting = wait_recovery(api, RUN, "backoff")
    assert len(fake.calls("load_weights")) == 1

    assert api.delete(f"/runs/{RUN}/monitor").status_code == 204
    recovery = recoveries(api, RUN)[0]
    assert recovery["status"] == "cancelled"
    assert recovery["finished_at"] is not None
    run = get_run(api, RUN)
    assert (run["status"], run["active_recovery_id"]) == ("stopped", None)
    types = [e["type"] for e in steps_of(api, RUN)]
    assert types == [
        "detected",
        "started",
        "checkpoint_selected",
        "failed",
        "cancelled",
    ]

    # Once the cancelled attempt would have been due, the workers finish
    # another recovery: had the cancelled one been picked up, it went first.
    due = datetime.fromisoformat(waiting["next_attempt_at"])
    seed(fake, BARRIER, "step-100", corrupted=True)
    wait_for(lambda: datetime.now(due.tzinfo) > due, timeout=5)
    watch(api, BARRIER, policy_id)
    assert wait_recovery(api, BARRIER)["status"] == "succeeded"
    assert [c.run_id for c in fake.calls("load_weights")] == [RUN, BARRIER]
    assert recoveries(api, RUN)[0]["status"] == "cancelled"
