"""Polls that fail are recorded, never start a recovery, and polling goes on."""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import partial
from typing import Any

import httpx

from app.tinker.fake_control import FakeTinkerControl
from tests.engine.recovery import client, get_run, recoveries, wait_recovery, watch
from tests.support.flow import events_of, fast_policy, wait_for

RUN = "33333333-aaaa-4bbb-8ccc-000000000003:train:0"
OTHER = "33333333-aaaa-4bbb-8ccc-000000000004:train:0"

# What Tinker does wrong, and the error the poll is recorded with.
FAULTS: list[tuple[dict[str, Any], str, bool]] = [
    ({"status": 500}, "server_error", True),
    ({"status": 404}, "not_found", False),
    ({"malformed_body": True}, "bad_response", True),
    ({"drop_connection": True}, "connection_error", True),
    ({"delay_s": 3.0}, "timeout", True),
]


def poll_errors(api: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    return [e for e in events_of(api, run_id) if e["type"] == "poll_error"]


def errors_after(
    api: httpx.Client, run_id: str, seen: int, more: int
) -> list[dict[str, Any]] | None:
    """The poll errors after the first `seen`, once there are `more` of them."""
    fresh = poll_errors(api, run_id)[seen:]
    return fresh if len(fresh) >= more else None


def polled_after(api: httpx.Client, run_id: str, moment: datetime) -> bool:
    polled = get_run(api, run_id)["last_polled_at"]
    return polled is not None and datetime.fromisoformat(polled) > moment


def test_poll_errors_are_recorded_and_polling_goes_on(
    make_service: Any, fake: FakeTinkerControl
) -> None:
    fake.seed_run(RUN, checkpoints=["step-100"])
    with client(make_service(tinker_timeout_ms=2_000)) as api:
        watch(api, RUN, fast_policy(api))
        wait_for(lambda: get_run(api, RUN)["last_polled_at"])
        checkpoint = get_run(api, RUN)["last_checkpoint"]["tinker_path"]

        for fault, code, retryable in FAULTS:
            seen = len(poll_errors(api, RUN))
            fake.inject_fault("get_training_run", count=None, **fault)
            # Two more errors: the run was polled again after the first.
            fresh = wait_for(partial(errors_after, api, RUN, seen, 2))
            codes = [e["data"]["error"]["code"] for e in fresh]
            assert set(codes) == {code}, (fault, codes)
            assert {e["data"]["error"]["retryable"] for e in fresh} == {retryable}
            assert all(e["recovery_id"] is None for e in fresh)
            run = get_run(api, RUN)
            assert run["status"] == "monitoring", fault
            assert run["last_error"]["code"] == code, fault
            # A poll that failed saw nothing: the checkpoint seen before stays.
            assert run["last_checkpoint"]["tinker_path"] == checkpoint, fault
            assert run["active_recovery_id"] is None
            assert recoveries(api, RUN) == []

            fake.clear_faults()
            healed = wait_for(lambda: get_run(api, RUN)["last_error"] is None)
            assert healed, fault
            assert get_run(api, RUN)["status"] == "monitoring"
        assert recoveries(api, RUN) == []


def test_a_corrupted_run_behind_poll_errors_is_not_recovered_until_seen(
    api: httpx.Client, fake: FakeTinkerControl
) -> None:
    fake.seed_run(RUN, checkpoints=["step-100"], corrupted=True)
    fake.inject_fault("get_training_run", status=503, count=None)
    watch(api, RUN, fast_policy(api))
    wait_for(lambda: len(poll_errors(api, RUN)) >= 3)
    assert recoveries(api, RUN) == []
    assert get_run(api, RUN)["status"] == "monitoring"
    assert fake.calls("load_weights") == []

    fake.clear_faults()
    recovery = wait_recovery(api, RUN)
    assert recovery["status"] == "succeeded", recovery
    assert recovery["trigger"] == "detected"


SLOW_POLL = timedelta(seconds=1.9)


def healthy_after(api: httpx.Client, run_id: str, when: datetime) -> Any:
    """The run, once a poll after `when` succeeded."""
    run = get_run(api, run_id)
    if run["last_error"] is None and polled_after(api, run_id, when):
        return run
    return None


def test_a_slow_run_does_not_hold_up_the_others(
    make_service: Any, fake: FakeTinkerControl
) -> None:
    fake.seed_run(RUN, checkpoints=["step-100"])
    fake.seed_run(OTHER)
    # One poll of RUN hangs past the Tinker timeout; the ones after it do not.
    fake.inject_fault(f"/api/v1/training_runs/{RUN}", delay_s=3.0)
    with client(make_service(tinker_timeout_ms=2_000)) as api:
        policy_id = fast_policy(api)
        watch(api, RUN, policy_id)
        watch(api, OTHER, policy_id)

        def slow_call() -> Any:
            calls = [c for c in fake.calls("get_training_run") if c.run_id == RUN]
            return calls[0] if calls else None

        held = wait_for(slow_call)

        def others_answered() -> list[Any] | None:
            answered = [
                c
                for c in fake.calls("get_training_run")
                if c.run_id == OTHER and c.time > held.time and c.status == 200
            ]
            return answered if len(answered) >= 3 else None

        wait_for(others_answered)
        assert slow_call().status is None, "the slow poll answered before the others"
        assert held.fault
        assert polled_after(api, OTHER, held.time)

        # The slow poll ends in a timeout; RUN is not polled again meanwhile,
        # and the next poll after it clears the error.
        [late] = wait_for(lambda: poll_errors(api, RUN))
        assert late["data"]["error"]["code"] == "timeout"
        polls = [c for c in fake.calls("get_training_run") if c.run_id == RUN]
        overlapping = [c for c in polls[1:] if c.time < held.time + SLOW_POLL]
        assert overlapping == [], "RUN was polled again while its poll hung"
        run = wait_for(lambda: healthy_after(api, RUN, held.time))
        assert run["last_checkpoint"]["tinker_path"].endswith("/weights/step-100")
