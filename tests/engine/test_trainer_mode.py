"""Restarts done by the trainer: requested, reported, checked, or timed out.

The trainer here is played by the test: it reads `restart_requested`, creates
the new run on the fake Tinker itself (with our client, or with the official
SDK as a real trainer would), and reports back over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import tinker

from app.tinker.client import TinkerClient
from app.tinker.fake_control import FakeTinkerControl
from app.webhooks.signing import SIGNATURE_HEADER, verify
from tests.conftest import TINKER_KEY
from tests.engine.recovery import (
    STEPS,
    data_of,
    get_run,
    seed,
    wait_recovery,
    watch,
)
from tests.support.flow import events_of, fast_policy, run_in, wait_for
from tests.support.servers import ThreadedServer, serve
from tests.webhooks.helpers import Receiver

RUN = "33333333-aaaa-4bbb-8ccc-000000000003:train:0"
OTHER_RUN = "44444444-aaaa-4bbb-8ccc-000000000004:train:0"
ATTEMPT = ["started", "checkpoint_selected", "restart_requested"]
SDK_WAIT_S = 15
TRAINER_STEPS = STEPS | {"restart_requested"}


def corrupted(
    api: httpx.Client, fake: FakeTinkerControl, run_id: str = RUN, **policy: Any
) -> list[str]:
    """Seed `run_id` corrupted and watch it under a fast trainer-mode policy."""
    paths = seed(fake, run_id, "step-100", "step-200", corrupted=True)
    name = f"trainer-{uuid.uuid4().hex[:8]}"
    policy_id = fast_policy(api, name, restart_mode="trainer", **policy)
    watch(api, run_id, policy_id, {"owner": "trainer"})
    return paths


def restart_requests(
    api: httpx.Client, run_id: str = RUN, count: int = 1
) -> list[dict[str, Any]]:
    """The run's `restart_requested` events, once there are `count` of them."""

    def check() -> list[dict[str, Any]] | None:
        found = [e for e in events_of(api, run_id) if e["type"] == "restart_requested"]
        return found if len(found) >= count else None

    return wait_for(check)


def restart_on_tinker(tinker_url: str, checkpoint: str, optimizer: bool) -> str:
    """Create a run from `checkpoint` in a session of the trainer's own."""

    async def restart() -> str:
        async with TinkerClient(tinker_url, TINKER_KEY, timeout_s=5) as client:
            session_id = await client.create_session(tags=["trainer"])
            request_id = await client.load_weights(
                session_id=session_id,
                model_seq_id=0,
                path=checkpoint,
                optimizer=optimizer,
                idempotency_key=uuid.uuid4().hex,
            )
            result = await client.wait_future(request_id, timeout_s=5)
            return client.new_run_id(session_id, 0, result)

    return asyncio.run(restart())


def steps_of(api: httpx.Client, run_id: str = RUN) -> list[dict[str, Any]]:
    """The run's recovery steps, restart requests included, oldest first."""
    return [e for e in events_of(api, run_id) if e["type"] in TRAINER_STEPS]


def report(
    api: httpx.Client, recovery_id: str, attempt: int, **body: Any
) -> httpx.Response:
    return api.post(f"/recoveries/{recovery_id}/attempts/{attempt}/report", json=body)


def answer(api: httpx.Client, request: dict[str, Any], tinker_url: str) -> str:
    """Do the restart `request` asks for, report it, and return the new run."""
    data = request["data"]
    new_run_id = restart_on_tinker(
        tinker_url, data["checkpoint"], data["restore_optimizer"]
    )
    response = report(
        api, request["recovery_id"], request["attempt"], new_run_id=new_run_id
    )
    assert response.status_code == 202, response.text
    return new_run_id


@pytest.fixture
def sdk(fake_tinker: ThreadedServer) -> Iterator[tinker.ServiceClient]:
    """The official SDK, as a trainer holds it, pointed at the fake."""
    client = tinker.ServiceClient(base_url=fake_tinker.url, api_key=TINKER_KEY)
    yield client
    client.close("success").result(timeout=SDK_WAIT_S)


def test_a_trainer_that_reports_in_time_completes_the_recovery(
    api: httpx.Client,
    fake: FakeTinkerControl,
    sdk: tinker.ServiceClient,
) -> None:
    paths = corrupted(api, fake)

    [request] = restart_requests(api)
    waiting = wait_recovery(api, RUN, "running")
    [attempt] = waiting["attempts"]
    assert attempt["status"] == "waiting_trainer"
    assert attempt["checkpoint_path"] == paths[-1]
    assert request["recovery_id"] == waiting["id"]
    assert request["attempt"] == 1
    assert request["data"]["checkpoint"] == paths[-1]
    assert request["data"]["restore_optimizer"] is True
    deadline = datetime.fromisoformat(request["data"]["deadline"])
    assert deadline == datetime.fromisoformat(attempt["deadline"])
    started = datetime.fromisoformat(attempt["started_at"])
    assert deadline - started == timedelta(milliseconds=10_000)
    assert fake.calls("load_weights") == []

    trainer = sdk.create_training_client_from_state_with_optimizer(
        request["data"]["checkpoint"]
    ).result(timeout=SDK_WAIT_S)
    response = report(api, waiting["id"], 1, new_run_id=trainer.model_id)
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["status"] == "running"
    assert accepted["attempts"][0]["new_run_id"] == trainer.model_id

    recovery = wait_recovery(api, RUN)
    assert recovery["status"] == "succeeded", recovery
    assert recovery["new_run_id"] == trainer.model_id
    [done] = recovery["attempts"]
    assert (done["status"], done["new_run_id"]) == ("done", trainer.model_id)
    steps = steps_of(api, RUN)
    assert [e["type"] for e in steps] == [
        "detected",
        *ATTEMPT,
        "client_created",
        "completed",
    ]
    outcome = {
        "new_run_id": trainer.model_id,
        "checkpoint": paths[-1],
        "restore_optimizer": True,
    }
    assert data_of(steps, "completed") == [outcome]
    assert data_of(events_of(api, RUN), "restart_reported") == [
        {"new_run_id": trainer.model_id}
    ]

    old = run_in(api, RUN, "recovered")
    assert old is not None and old["successor_run_id"] == trainer.model_id
    new = get_run(api, trainer.model_id)
    assert (new["predecessor_run_id"], new["metadata"]) == (RUN, {"owner": "trainer"})
    wait_for(lambda: get_run(api, trainer.model_id)["last_polled_at"])
    [load] = fake.calls("load_weights")
    assert load.body["optimizer"] is True
    assert fake.run_state(trainer.model_id).loaded_from == paths[-1]


def test_waiting_for_trainers_holds_no_worker(
    api: httpx.Client, fake_tinker: ThreadedServer, fake: FakeTinkerControl
) -> None:
    # One worker (the default): both recoveries can only reach their request
    # if the first handed its claim back while it waits.
    corrupted(api, fake, RUN)
    corrupted(api, fake, OTHER_RUN)

    requests = [restart_requests(api, run)[0] for run in (RUN, OTHER_RUN)]
    new_runs = [answer(api, request, fake_tinker.url) for request in requests]

    for run_id, new_run_id in zip((RUN, OTHER_RUN), new_runs, strict=True):
        recovery = wait_recovery(api, run_id)
        assert (recovery["status"], recovery["new_run_id"]) == (
            "succeeded",
            new_run_id,
        )


def test_a_reported_error_fails_the_attempt_and_asks_again(
    api: httpx.Client, fake_tinker: ThreadedServer, fake: FakeTinkerControl
) -> None:
    corrupted(api, fake)
    [first] = restart_requests(api)

    refused = report(api, first["recovery_id"], 1, error="out of GPU memory")
    assert refused.status_code == 202, refused.text
    second = restart_requests(api, count=2)[1]
    assert (second["recovery_id"], second["attempt"]) == (first["recovery_id"], 2)
    assert second["data"]["checkpoint"] == first["data"]["checkpoint"]
    new_run_id = answer(api, second, fake_tinker.url)

    recovery = wait_recovery(api, RUN)
    assert recovery["status"] == "succeeded", recovery
    failed, done = recovery["attempts"]
    assert failed["status"] == "failed"
    assert failed["error"] == {
        "code": "trainer_error",
        "message": "out of GPU memory",
        "retryable": True,
    }
    assert (done["status"], done["new_run_id"]) == ("done", new_run_id)
    assert [e["type"] for e in steps_of(api, RUN)] == [
        "detected",
        *ATTEMPT,
        "failed",
        *ATTEMPT,
        "client_created",
        "completed",
    ]
    reports = data_of(events_of(api, RUN), "restart_reported")
    assert reports == [{"error": "out of GPU memory"}, {"new_run_id": new_run_id}]


def test_a_trainer_that_never_reports_times_out_until_exhausted(
    api: httpx.Client, fake: FakeTinkerControl
) -> None:
    corrupted(
        api,
        fake,
        attempt_timeout_ms=800,
        max_attempts=2,
        backoff_ms=300,
        max_backoff_ms=300,
    )

    recovery = wait_recovery(api, RUN, timeout=20)

    assert recovery["status"] == "exhausted", recovery
    timeout = {
        "code": "attempt_timeout",
        "message": "the attempt outlived attempt_timeout_ms",
        "retryable": True,
    }
    assert [a["error"] for a in recovery["attempts"]] == [timeout, timeout]
    first, second = recovery["attempts"]
    assert datetime.fromisoformat(first["finished_at"]) >= datetime.fromisoformat(
        first["deadline"]
    )
    # The second attempt waited out the backoff after the first one failed.
    pause = datetime.fromisoformat(second["started_at"]) - datetime.fromisoformat(
        first["finished_at"]
    )
    assert pause >= timedelta(milliseconds=300)
    assert recovery["error"] == timeout
    assert [e["type"] for e in steps_of(api, RUN)] == [
        "detected",
        *ATTEMPT,
        "failed",
        *ATTEMPT,
        "failed",
        "exhausted",
    ]
    assert run_in(api, RUN, "exhausted") is not None
    late = report(api, recovery["id"], 2, new_run_id="late:train:0")
    assert (late.status_code, late.json()["error"]) == (409, "stale_attempt")


def test_reports_that_do_not_fit_are_refused_and_change_nothing(
    api: httpx.Client, fake_tinker: ThreadedServer, fake: FakeTinkerControl
) -> None:
    corrupted(api, fake)
    [first] = restart_requests(api)
    recovery_id = first["recovery_id"]

    both = report(api, recovery_id, 1, new_run_id="x:train:0", error="no")
    neither = report(api, recovery_id, 1)
    itself = report(api, recovery_id, 1, new_run_id=RUN)
    missing = report(api, str(uuid.uuid4()), 1, new_run_id="x:train:0")
    ahead = report(api, recovery_id, 2, new_run_id="x:train:0")
    for response, status, code in [
        (both, 422, "validation_error"),
        (neither, 422, "validation_error"),
        (itself, 422, "validation_error"),
        (missing, 404, "recovery_not_found"),
        (ahead, 409, "stale_attempt"),
    ]:
        assert (response.status_code, response.json()["error"]) == (status, code)
    [attempt] = api.get(f"/recoveries/{recovery_id}").json()["attempts"]
    assert (attempt["status"], attempt["new_run_id"], attempt["error"]) == (
        "waiting_trainer",
        None,
        None,
    )

    assert report(api, recovery_id, 1, error="disk full").status_code == 202
    again = report(api, recovery_id, 1, new_run_id="x:train:0")
    assert (again.status_code, again.json()["error"]) == (409, "stale_attempt")
    second = restart_requests(api, count=2)[1]
    late = report(api, recovery_id, 1, new_run_id="x:train:0")
    assert (late.status_code, late.json()["error"]) == (409, "stale_attempt")
    new_run_id = answer(api, second, fake_tinker.url)

    assert wait_recovery(api, RUN)["new_run_id"] == new_run_id
    after = report(api, recovery_id, 2, new_run_id=new_run_id)
    assert (after.status_code, after.json()["error"]) == (409, "stale_attempt")
    reports = data_of(events_of(api, RUN), "restart_reported")
    assert reports == [{"error": "disk full"}, {"new_run_id": new_run_id}]


def test_a_reported_run_that_tinker_does_not_know_fails_the_attempt(
    api: httpx.Client, fake: FakeTinkerControl
) -> None:
    corrupted(api, fake, max_attempts=1)
    [request] = restart_requests(api)
    ghost = "55555555-aaaa-4bbb-8ccc-000000000005:train:0"

    response = report(api, request["recovery_id"], 1, new_run_id=ghost)
    assert response.status_code == 202, response.text

    recovery = wait_recovery(api, RUN)
    assert recovery["status"] == "exhausted", recovery
    [attempt] = recovery["attempts"]
    assert attempt["error"]["code"] == "new_run_missing"
    assert attempt["error"]["retryable"] is True
    assert ghost in attempt["error"]["message"]
    assert "client_created" not in [e["type"] for e in steps_of(api, RUN)]
    assert api.get(f"/runs/{ghost}").status_code == 404


def test_a_report_in_time_is_checked_even_when_tinker_answers_late(
    api: httpx.Client, fake_tinker: ThreadedServer, fake: FakeTinkerControl
) -> None:
    corrupted(api, fake, attempt_timeout_ms=2_500, max_attempts=1)
    [request] = restart_requests(api)
    data = request["data"]
    new_run_id = restart_on_tinker(
        fake_tinker.url, data["checkpoint"], data["restore_optimizer"]
    )
    # Tinker takes longer to show the new run than the attempt has left.
    fake.inject_fault(f"/api/v1/training_runs/{new_run_id}", delay_s=3.5)

    response = report(api, request["recovery_id"], 1, new_run_id=new_run_id)
    assert response.status_code == 202, response.text

    recovery = wait_recovery(api, RUN)
    assert recovery["status"] == "succeeded", recovery
    assert recovery["new_run_id"] == new_run_id


def test_a_report_completes_after_the_service_restarted(
    make_service: Any, fake_tinker: ThreadedServer, fake: FakeTinkerControl
) -> None:
    first = make_service()
    with httpx.Client(base_url=first.url, timeout=10) as api:
        corrupted(api, fake)
        [request] = restart_requests(api)
    first.stop()

    new_run_id = restart_on_tinker(fake_tinker.url, request["data"]["checkpoint"], True)
    second = make_service()
    with httpx.Client(base_url=second.url, timeout=10) as api:
        waiting = api.get(f"/recoveries/{request['recovery_id']}").json()
        assert waiting["attempts"][0]["status"] == "waiting_trainer"
        response = report(api, request["recovery_id"], 1, new_run_id=new_run_id)
        assert response.status_code == 202, response.text

        recovery = wait_recovery(api, RUN)
        assert recovery["status"] == "succeeded", recovery
        assert recovery["new_run_id"] == new_run_id
        assert len(recovery["attempts"]) == 1
        assert [e["type"] for e in steps_of(api, RUN)] == [
            "detected",
            *ATTEMPT,
            "client_created",
            "completed",
        ]
        assert get_run(api, new_run_id)["predecessor_run_id"] == RUN
    assert [c.body["path"] for c in fake.calls("load_weights")] == [
        request["data"]["checkpoint"]
    ]


def test_the_restart_request_is_posted_signed_to_on_restart_url(
    make_service: Any, fake_tinker: ThreadedServer, fake: FakeTinkerControl
) -> None:
    secret = "restart-webhook-secret"
    receiver = Receiver()
    with serve(receiver.app) as hook:
        service = make_service(webhook_secret=secret)
        with httpx.Client(base_url=service.url, timeout=10) as api:
            paths = corrupted(
                api,
                fake,
                restore_optimizer=False,
                on_restart_url=f"{hook.url}/restart",
            )
            [request] = restart_requests(api)
            [posted] = wait_for(lambda: receiver.requests)

            assert posted.path == "/restart"
            assert verify(posted.body, secret, posted.headers[SIGNATURE_HEADER.lower()])
            body = json.loads(posted.body)
            assert body == {
                "type": "restart_requested",
                "run_id": RUN,
                "recovery_id": request["recovery_id"],
                "attempt": 1,
                "checkpoint": paths[-1],
                "restore_optimizer": False,
                "deadline": request["data"]["deadline"],
                "metadata": {"owner": "trainer"},
            }

            new_run_id = restart_on_tinker(
                fake_tinker.url, body["checkpoint"], body["restore_optimizer"]
            )
            response = report(
                api, body["recovery_id"], body["attempt"], new_run_id=new_run_id
            )
            assert response.status_code == 202, response.text
            recovery = wait_recovery(api, RUN)
            assert recovery["status"] == "succeeded", recovery
    assert fake.run_state(new_run_id).optimizer_restored is False
