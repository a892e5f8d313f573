"""Attempts that fail: retries, fallbacks to older checkpoints, and giving up."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx

from app.tinker.fake_control import FakeTinkerControl
from tests.engine.recovery import (
    data_of,
    get_run,
    seed,
    steps_of,
    wait_recovery,
    watch,
)
from tests.support.flow import fast_policy, wait_for

RUN = "22222222-aaaa-4bbb-8ccc-000000000002:train:0"
ATTEMPT = ["started", "checkpoint_selected"]


def corrupted(
    api: httpx.Client, fake: FakeTinkerControl, *names: str, **policy: Any
) -> list[str]:
    """Seed RUN corrupted with `names`, and watch it under a fast policy."""
    paths = seed(fake, RUN, *names, corrupted=True)
    watch(api, RUN, fast_policy(api, **policy), {"owner": "ops"})
    return paths


def loaded_paths(fake: FakeTinkerControl) -> list[str]:
    return [call.body["path"] for call in fake.calls("load_weights")]


def test_fallback_after_a_permanent_load_failure(
    api: httpx.Client, fake: FakeTinkerControl
) -> None:
    fake.inject_fault("load_weights", status=400, detail="incompatible checkpoint")
    paths = corrupted(api, fake, "step-100", "step-200", "step-300")

    recovery = wait_recovery(api, RUN)
    assert recovery["status"] == "succeeded", recovery
    first, second = recovery["attempts"]
    assert first["status"] == "failed"
    assert first["checkpoint_path"] == paths[2]
    assert first["error"]["code"] == "bad_request"
    assert first["error"]["retryable"] is False
    assert second["status"] == "done"
    assert second["checkpoint_path"] == paths[1]
    assert fake.run_state(recovery["new_run_id"]).loaded_from == paths[1]
    assert loaded_paths(fake) == [paths[2], paths[1]]

    types = [e["type"] for e in steps_of(api, RUN)]
    assert types == [
        "detected",
        *ATTEMPT,
        "failed",
        *ATTEMPT,
        "client_created",
        "completed",
    ]


def test_fallback_when_the_checkpoint_expires_before_it_loads(
    api: httpx.Client, fake: FakeTinkerControl
) -> None:
    # The load is held up after the checkpoint was chosen; it expires meanwhile.
    fake.inject_fault("load_weights", delay_s=2.0)
    paths = corrupted(api, fake, "step-100", "step-200")
    wait_for(lambda: fake.calls("load_weights"))
    fake.expire_checkpoint(paths[1])

    recovery = wait_recovery(api, RUN)
    assert recovery["status"] == "succeeded", recovery
    first, second = recovery["attempts"]
    assert first["checkpoint_path"] == paths[1]
    assert first["error"]["code"] == "load_failed"
    assert first["error"]["retryable"] is False
    assert second["checkpoint_path"] == paths[0]
    assert fake.run_state(recovery["new_run_id"]).loaded_from == paths[0]


def test_no_fallback_exhausts(api: httpx.Client, fake: FakeTinkerControl) -> None:
    fake.inject_fault("load_weights", status=400)
    corrupted(api, fake, "step-100", "step-200", fallback_to_previous=False)

    recovery = wait_recovery(api, RUN)
    assert recovery["status"] == "exhausted", recovery
    [attempt] = recovery["attempts"]
    assert attempt["error"]["code"] == "bad_request"
    assert recovery["error"] == attempt["error"]
    assert len(fake.calls("load_weights")) == 1
    assert get_run(api, RUN)["status"] == "exhausted"


def test_retry_then_success(api: httpx.Client, fake: FakeTinkerControl) -> None:
    fake.inject_fault("load_weights", status=503)
    paths = corrupted(api, fake, "step-100", "step-200")

    recovery = wait_recovery(api, RUN)
    assert recovery["status"] == "succeeded", recovery
    first, second = recovery["attempts"]
    assert first["status"] == "failed"
    assert first["error"]["code"] == "server_error"
    assert first["error"]["retryable"] is True
    assert first["finished_at"] is not None
    assert second["status"] == "done"
    # A retryable failure retries the same checkpoint.
    assert [first["checkpoint_path"], second["checkpoint_path"]] == [paths[1]] * 2
    loads = fake.calls("load_weights")
    assert [call.status for call in loads] == [503, 200]
    # The 503 left it unknown whether Tinker acted: the same restart is sent
    # again under the same key, so a load that did happen is not made twice.
    assert loads[0].idempotency_key == loads[1].idempotency_key
    assert loads[0].body["model_seq_id"] == loads[1].body["model_seq_id"]

    steps = steps_of(api, RUN)
    assert [e["type"] for e in steps] == [
        "detected",
        *ATTEMPT,
        "failed",
        *ATTEMPT,
        "client_created",
        "completed",
    ]
    assert [e["attempt"] for e in steps] == [None, 1, 1, 1, 2, 2, 2, 2]
    assert data_of(steps, "failed") == [{"error": first["error"]}]
    assert get_run(api, RUN)["status"] == "recovered"


def test_exhausted_after_max_attempts(
    api: httpx.Client, fake: FakeTinkerControl
) -> None:
    fake.inject_fault("load_weights", status=503, count=None)
    corrupted(api, fake, "step-100", max_attempts=3)

    recovery = wait_recovery(api, RUN)
    fake.clear_faults()
    assert recovery["status"] == "exhausted", recovery
    assert [a["status"] for a in recovery["attempts"]] == ["failed"] * 3
    assert recovery["error"]["code"] == "server_error"
    assert recovery["error"]["retryable"] is True
    assert recovery["new_run_id"] is None
    assert len(fake.calls("load_weights")) == 3

    steps = steps_of(api, RUN)
    assert [e["type"] for e in steps] == [
        "detected",
        *([*ATTEMPT, "failed"] * 3),
        "exhausted",
    ]
    assert data_of(steps, "exhausted") == [{"error": recovery["error"]}]
    run = get_run(api, RUN)
    assert run["status"] == "exhausted"
    assert run["active_recovery_id"] is None
    assert run["next_poll_at"] is None


def test_permanent_error_exhausts_at_once(
    api: httpx.Client, fake: FakeTinkerControl
) -> None:
    fake.inject_fault("load_weights", status=403, count=None)
    corrupted(api, fake, "step-100", "step-200", max_attempts=5)

    recovery = wait_recovery(api, RUN)
    assert recovery["status"] == "exhausted", recovery
    assert len(recovery["attempts"]) == 1
    assert recovery["error"]["code"] == "forbidden"
    assert recovery["error"]["retryable"] is False
    assert len(fake.calls("load_weights")) == 1
    types = [e["type"] for e in steps_of(api, RUN)]
    assert types == ["detected", *ATTEMPT, "failed", "exhausted"]


def test_corrupted_before_the_first_checkpoint(
    api: httpx.Client, fake: FakeTinkerControl
) -> None:
    fake.seed_run(RUN, corrupted=True)
    fake.add_checkpoint(RUN, "sampled", kind="sampler")
    watch(api, RUN, fast_policy(api, max_attempts=3))

    recovery = wait_recovery(api, RUN)
    assert recovery["status"] == "exhausted", recovery
    assert recovery["error"]["code"] == "no_checkpoint"
    assert recovery["error"]["retryable"] is False
    assert "checkpoint" in recovery["error"]["message"]
    [attempt] = recovery["attempts"]
    assert attempt["checkpoint_path"] is None
    assert fake.calls("load_weights") == []

    steps = steps_of(api, RUN)
    assert [e["type"] for e in steps] == ["detected", "started", "failed", "exhausted"]
    assert data_of(steps, "detected") == [{"checkpoint": None}]
    assert get_run(api, RUN)["status"] == "exhausted"


def test_attempt_timeout(api: httpx.Client, fake: FakeTinkerControl) -> None:
    fake.set_future_delay(10.0)
    corrupted(api, fake, "step-100", attempt_timeout_ms=1_000, max_attempts=2)

    recovery = wait_recovery(api, RUN)
    assert recovery["status"] == "exhausted", recovery
    assert len(recovery["attempts"]) == 2
    for attempt in recovery["attempts"]:
        assert attempt["status"] == "failed"
        assert attempt["error"]["code"] == "attempt_timeout", attempt
        assert attempt["error"]["retryable"] is True
        took = datetime.fromisoformat(attempt["finished_at"]) - datetime.fromisoformat(
            attempt["started_at"]
        )
        # The event loop's clock and the wall clock may differ by a little.
        assert 0.95 <= took.total_seconds() < 5.0
    assert recovery["attempts"][-1]["checkpoint_path"] is not None
    loads = fake.calls("load_weights")
    assert len(loads) == sum(1 for a in recovery["attempts"] if a["checkpoint_path"])
    assert fake.calls("retrieve_future")
    types = [e["type"] for e in steps_of(api, RUN)]
    assert types[-1] == "exhausted"
    assert types.count("failed") == 2


def test_latest_is_read_afresh_at_each_attempt(
    api: httpx.Client, fake: FakeTinkerControl
) -> None:
    # The first load is held up, then fails; meanwhile a newer checkpoint lands.
    fake.inject_fault("load_weights", status=503, delay_s=1.0)
    paths = corrupted(api, fake, "step-100", "step-200")
    wait_for(lambda: fake.calls("load_weights"))
    newer = fake.add_checkpoint(RUN, "step-300").tinker_path

    recovery = wait_recovery(api, RUN)
    assert recovery["status"] == "succeeded", recovery
    chosen = [a["checkpoint_path"] for a in recovery["attempts"]]
    assert chosen == [paths[-1], newer]
    assert fake.run_state(recovery["new_run_id"]).loaded_from == newer


def test_a_lost_restart_answer_makes_no_second_run(
    api: httpx.Client, fake: FakeTinkerControl
) -> None:
    # Tinker creates the run, then the answer is lost on the way back.
    fake.inject_fault("load_weights", after=True, drop_connection=True)
    paths = corrupted(api, fake, "step-100", "step-200")

    recovery = wait_recovery(api, RUN)
    assert recovery["status"] == "succeeded", recovery
    first, second = recovery["attempts"]
    assert first["error"]["retryable"] is True
    loads = fake.calls("load_weights")
    assert len(loads) == 2
    assert loads[0].idempotency_key == loads[1].idempotency_key
    # The second send was answered with the first one's run: only one exists.
    new_run = second["new_run_id"]
    assert new_run.endswith(":train:0")
    assert fake.run_state(new_run).loaded_from == paths[1]
    sessions = {call.body["session_id"] for call in loads}
    [session_id] = sessions
    try:
        fake.run_state(f"{session_id}:train:1")
    except httpx.HTTPStatusError as error:
        assert error.response.status_code == 404
    else:
        raise AssertionError("a second run was created for one corruption")
