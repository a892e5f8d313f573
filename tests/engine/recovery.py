"""Helpers to set up a corrupted run and follow its recovery through the API."""

from __future__ import annotations

from typing import Any

import httpx

from app.tinker.fake_control import FakeTinkerControl
from tests.support.flow import events_of, wait_for
from tests.support.servers import ThreadedServer

TERMINAL = ("succeeded", "exhausted", "cancelled")
# Events written by the steps of a recovery, as opposed to monitoring,
# polling and webhook bookkeeping.
STEPS = frozenset(
    {
        "detected",
        "recovery_requested",
        "started",
        "checkpoint_selected",
        "client_created",
        "completed",
        "failed",
        "exhausted",
        "cancelled",
    }
)


def weights(run_id: str, name: str) -> str:
    """The path of the training checkpoint `name` of `run_id`."""
    return f"tinker://{run_id}/weights/{name}"


def seed(
    fake: FakeTinkerControl, run_id: str, *names: str, corrupted: bool = False
) -> list[str]:
    """Seed a run with training checkpoints; return their paths, oldest first."""
    fake.seed_run(run_id, checkpoints=names, corrupted=corrupted)
    return [weights(run_id, name) for name in names]


def watch(
    api: httpx.Client,
    run_id: str,
    policy_id: str,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Register `run_id` under the policy; return the run."""
    body = {"policy_id": policy_id, "metadata": metadata or {}}
    response = api.post(f"/runs/{run_id}/monitor", json=body)
    assert response.status_code == 201, response.text
    run: dict[str, Any] = response.json()
    return run


def get_run(api: httpx.Client, run_id: str) -> dict[str, Any]:
    response = api.get(f"/runs/{run_id}")
    assert response.status_code == 200, response.text
    run: dict[str, Any] = response.json()
    return run


def recoveries(api: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    """The run's recoveries, newest first."""
    response = api.get(f"/runs/{run_id}/recoveries")
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def wait_recovery(
    api: httpx.Client, run_id: str, *statuses: str, timeout: float = 15.0
) -> dict[str, Any]:
    """The run's newest recovery, once its status is one of `statuses`
    (by default, once it has ended)."""
    wanted = statuses or TERMINAL

    def check() -> dict[str, Any] | None:
        found = recoveries(api, run_id)
        return found[0] if found and found[0]["status"] in wanted else None

    return wait_for(check, timeout=timeout)


def steps_of(api: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    """The run's events that record the steps of its recoveries, oldest first."""
    return [e for e in events_of(api, run_id) if e["type"] in STEPS]


def data_of(events: list[dict[str, Any]], type: str) -> list[dict[str, Any]]:
    """The `data` of every event of `type`, oldest first."""
    return [event["data"] for event in events if event["type"] == type]


def client(server: ThreadedServer) -> httpx.Client:
    """A client of a service started with `make_service`; close it after use."""
    return httpx.Client(base_url=server.url, timeout=10)
