"""Recoveries that succeed at the first attempt, by each checkpoint strategy."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.tinker.fake_control import FakeTinkerControl
from tests.engine.recovery import (
    data_of,
    get_run,
    seed,
    steps_of,
    wait_recovery,
    watch,
    weights,
)
from tests.support.flow import fast_policy, run_in, wait_for

RUN = "11111111-aaaa-4bbb-8ccc-000000000001:train:0"
SUCCESS = ["detected", "started", "checkpoint_selected", "client_created", "completed"]


def recover(
    api: httpx.Client, fake: FakeTinkerControl, policy_id: str
) -> dict[str, Any]:
    """Watch the seeded RUN, corrupt it, and return its succeeded recovery."""
    watch(api, RUN, policy_id)
    fake.corrupt(RUN)
    recovery = wait_recovery(api, RUN)
    assert recovery["status"] == "succeeded", recovery
    return recovery


@pytest.mark.parametrize("restore", [True, False])
def test_latest_success(
    api: httpx.Client, fake: FakeTinkerControl, restore: bool
) -> None:
    paths = seed(fake, RUN, "step-100", "step-200")
    metadata = {"team": "nlp", "trial": 7}
    policy_id = fast_policy(api, restore_optimizer=restore)
    watch(api, RUN, policy_id, metadata)
    healthy = wait_for(
        lambda: get_run(api, RUN)["last_polled_at"] and get_run(api, RUN)
    )
    assert healthy["status"] == "monitoring"
    assert healthy["last_checkpoint"]["tinker_path"] == paths[-1]
    fake.corrupt(RUN)

    recovery = wait_recovery(api, RUN)
    assert recovery["status"] == "succeeded"
    assert recovery["trigger"] == "detected"
    assert recovery["error"] is None
    assert recovery["finished_at"] is not None
    [attempt] = recovery["attempts"]
    new_run_id = recovery["new_run_id"]
    assert attempt["status"] == "done"
    assert attempt["checkpoint_path"] == paths[-1]
    assert attempt["restore_optimizer"] is restore
    assert attempt["new_run_id"] == new_run_id
    assert attempt["error"] is None

    state = fake.run_state(new_run_id)
    assert state.loaded_from == paths[-1]
    assert state.optimizer_restored is restore
    assert not state.run.corrupted
    [load] = fake.calls("load_weights")
    assert load.body["optimizer"] is restore
    assert load.idempotency_key

    old = run_in(api, RUN, "recovered")
    assert old is not None
    assert old["successor_run_id"] == new_run_id
    assert old["active_recovery_id"] is None
    new = get_run(api, new_run_id)
    assert new["policy_id"] == policy_id
    assert new["metadata"] == metadata
    assert new["predecessor_run_id"] == RUN
    assert new["status"] == "monitoring"
    wait_for(lambda: get_run(api, new_run_id)["last_polled_at"])

    steps = steps_of(api, RUN)
    assert [e["type"] for e in steps] == SUCCESS
    assert {e["recovery_id"] for e in steps} == {recovery["id"]}
    assert [e["attempt"] for e in steps] == [None, 1, 1, 1, 1]
    assert data_of(steps, "detected") == [{"checkpoint": paths[-1]}]
    assert data_of(steps, "checkpoint_selected")[0]["checkpoint"] == paths[-1]
    outcome = {
        "new_run_id": new_run_id,
        "checkpoint": paths[-1],
        "restore_optimizer": restore,
    }
    assert data_of(steps, "client_created") == [outcome]
    assert data_of(steps, "completed") == [outcome]
    ids = [e["id"] for e in steps]
    assert ids == sorted(ids)


def test_specific_checkpoint(api: httpx.Client, fake: FakeTinkerControl) -> None:
    paths = seed(fake, RUN, "step-100", "step-200", "step-300")
    policy_id = fast_policy(
        api, checkpoint_strategy="specific", checkpoint_path=paths[0]
    )
    recovery = recover(api, fake, policy_id)
    assert recovery["attempts"][0]["checkpoint_path"] == paths[0]
    assert fake.run_state(recovery["new_run_id"]).loaded_from == paths[0]


@pytest.mark.parametrize(("mode", "picked"), [("min", "step-200"), ("max", "step-300")])
def test_best_checkpoint(
    api: httpx.Client, fake: FakeTinkerControl, mode: str, picked: str
) -> None:
    fake.seed_run(RUN)
    losses = {"step-100": "0.5", "step-200": "0.3", "step-300": "0.9", "step-400": None}
    for name, loss in losses.items():
        metadata = {"eval_loss": loss} if loss else {"other": "1"}
        fake.add_checkpoint(RUN, name, user_metadata=metadata)
    fake.add_checkpoint(
        RUN, "sampled", kind="sampler", user_metadata={"eval_loss": "0"}
    )
    policy_id = fast_policy(
        api, checkpoint_strategy="best", best_metric="eval_loss", best_mode=mode
    )
    recovery = recover(api, fake, policy_id)
    assert recovery["attempts"][0]["checkpoint_path"] == weights(RUN, picked)
    assert fake.run_state(recovery["new_run_id"]).loaded_from == weights(RUN, picked)


def test_latest_skips_sampler_and_expired(
    api: httpx.Client, fake: FakeTinkerControl
) -> None:
    paths = seed(fake, RUN, "step-100", "step-200", "step-300")
    fake.expire_checkpoint(paths[-1])
    fake.add_checkpoint(RUN, "step-400", kind="sampler")
    recovery = recover(api, fake, fast_policy(api))
    assert recovery["attempts"][0]["checkpoint_path"] == paths[1]
    assert fake.run_state(recovery["new_run_id"]).loaded_from == paths[1]
    assert [c.body["path"] for c in fake.calls("load_weights")] == [paths[1]]


def test_ready_while_running(api: httpx.Client) -> None:
    response = api.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "database": True, "workers": True}
