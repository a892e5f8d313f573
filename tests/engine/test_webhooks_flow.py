"""Webhooks sent by recoveries, end to end, to a receiver on a loopback port."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.tinker.fake_control import FakeTinkerControl
from app.webhooks.signing import SIGNATURE_HEADER, verify
from tests.engine.recovery import client, get_run, seed, wait_recovery, watch
from tests.support.flow import events_of, fast_policy, wait_for
from tests.support.servers import ThreadedServer, serve

RUN = "66666666-aaaa-4bbb-8ccc-000000000008:train:0"
SECRET = "hook-signing-secret-for-tests"
METADATA = {"team": "nlp", "labels": ["a", "b"]}


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A webhook receiver that records what it gets and answers `status`."""

    status: int = 200
    received: list[Delivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            body = await request.body()
            with self.lock:
                self.received.append(
                    Delivery(request.url.path, dict(request.headers), body)
                )
            return Response(status_code=self.status)

        return Starlette(routes=[Route("/{name}", hook, methods=["POST"])])

    def at(self, path: str) -> list[Delivery]:
        with self.lock:
            return [d for d in self.received if d.path == path]


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, ThreadedServer]]:
    hooks = Receiver()
    with serve(hooks.app()) as server:
        yield hooks, server


def hook_policy(api: httpx.Client, server: ThreadedServer) -> str:
    return fast_policy(
        api,
        on_recovery_url=f"{server.url}/recovered",
        on_failure_url=f"{server.url}/failed",
    )


def of_type(api: httpx.Client, run_id: str, type: str) -> list[dict[str, Any]]:
    return [e for e in events_of(api, run_id) if e["type"] == type]


def test_recovered_webhook_is_signed(
    make_service: Any,
    fake: FakeTinkerControl,
    receiver: tuple[Receiver, ThreadedServer],
) -> None:
    hooks, server = receiver
    paths = seed(fake, RUN, "step-100", "step-200", corrupted=True)
    with client(make_service(webhook_secret=SECRET)) as api:
        watch(api, RUN, hook_policy(api, server), METADATA)
        recovery = wait_recovery(api, RUN)
        assert recovery["status"] == "succeeded", recovery

        [delivery] = wait_for(lambda: hooks.at("/recovered"))
        assert delivery.json() == {
            "type": "recovered",
            "run_id": RUN,
            "new_run_id": recovery["new_run_id"],
            "checkpoint": paths[-1],
            "recovery_id": recovery["id"],
            "metadata": METADATA,
        }
        signature = delivery.headers[SIGNATURE_HEADER.lower()]
        assert signature.startswith("sha256=")
        assert verify(delivery.body, SECRET, signature)
        assert not verify(delivery.body, "another-secret", signature)
        assert delivery.headers["content-type"] == "application/json"

        [delivered] = wait_for(lambda: of_type(api, RUN, "webhook_delivered"))
        assert delivered["recovery_id"] == recovery["id"]
        assert SECRET not in json.dumps(events_of(api, RUN))
        assert hooks.at("/failed") == []


def test_failure_webhook_after_exhaustion(
    make_service: Any,
    fake: FakeTinkerControl,
    receiver: tuple[Receiver, ThreadedServer],
) -> None:
    hooks, server = receiver
    fake.seed_run(RUN, corrupted=True)
    with client(make_service(webhook_secret=SECRET)) as api:
        watch(api, RUN, hook_policy(api, server), METADATA)
        recovery = wait_recovery(api, RUN)
        assert recovery["status"] == "exhausted", recovery

        [delivery] = wait_for(lambda: hooks.at("/failed"))
        assert delivery.json() == {
            "type": "recovery_failed",
            "run_id": RUN,
            "error": recovery["error"],
            "recovery_id": recovery["id"],
            "metadata": METADATA,
        }
        assert delivery.json()["error"]["code"] == "no_checkpoint"
        assert verify(delivery.body, SECRET, delivery.headers[SIGNATURE_HEADER.lower()])
        assert hooks.at("/recovered") == []


def test_a_failing_receiver_does_not_change_the_outcome(
    make_service: Any,
    fake: FakeTinkerControl,
    receiver: tuple[Receiver, ThreadedServer],
) -> None:
    hooks, server = receiver
    hooks.status = 500
    seed(fake, RUN, "step-100", corrupted=True)
    with client(make_service(webhook_max_attempts=3)) as api:
        watch(api, RUN, hook_policy(api, server))
        recovery = wait_recovery(api, RUN)
        assert recovery["status"] == "succeeded", recovery

        [failed] = wait_for(lambda: of_type(api, RUN, "webhook_failed"))
        assert failed["recovery_id"] == recovery["id"]
        assert failed["data"]["attempts"] == 3
        assert "500" in failed["data"]["error"]
        tries = hooks.at("/recovered")
        assert len(tries) == 3
        assert len({d.body for d in tries}) == 1
        assert all(SIGNATURE_HEADER.lower() not in d.headers for d in tries)

        after = wait_recovery(api, RUN)
        assert (after["status"], after["new_run_id"]) == (
            "succeeded",
            recovery["new_run_id"],
        )
        assert get_run(api, RUN)["status"] == "recovered"
        assert of_type(api, RUN, "webhook_delivered") == []
