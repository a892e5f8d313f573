"""Helpers for tests that follow a recovery through the running service."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

T = TypeVar("T")


def wait_for(
    check: Callable[[], T | None], timeout: float = 15.0, interval: float = 0.05
) -> T:
    """Call `check` until it returns something truthy, or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def fast_policy(api: httpx.Client, name: str = "fast", **fields: Any) -> str:
    """Create an enabled policy with short intervals; return its id."""
    body = {
        "name": name,
        "enabled": True,
        "poll_interval_ms": 100,
        "backoff_ms": 20,
        "max_backoff_ms": 100,
        "attempt_timeout_ms": 10_000,
        **fields,
    }
    response = api.post("/policies", json=body)
    assert response.status_code == 201, response.text
    policy_id: str = response.json()["id"]
    return policy_id


def run_in(api: httpx.Client, run_id: str, *statuses: str) -> dict[str, Any] | None:
    """The run, once its status is one of `statuses`."""
    run: dict[str, Any] = api.get(f"/runs/{run_id}").json()
    return run if run["status"] in statuses else None


def events_of(api: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    """Every stored event of a run, oldest first."""
    found: list[dict[str, Any]] = []
    after = 0
    while True:
        page = api.get(
            "/events", params={"run_id": run_id, "after": after, "limit": 1000}
        ).json()
        found.extend(page["items"])
        if not page["items"]:
            return found
        after = page["items"][-1]["id"]


def types_of(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]
