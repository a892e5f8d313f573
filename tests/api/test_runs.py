"""The run endpoints: registering, listing, stopping, and manual recovery."""

from __future__ import annotations

from typing import Any

import httpx

RUN_FIELDS = {
    "run_id",
    "status",
    "policy_id",
    "metadata",
    "last_polled_at",
    "next_poll_at",
    "last_error",
    "last_checkpoint",
    "active_recovery_id",
    "successor_run_id",
    "predecessor_run_id",
    "created_at",
    "updated_at",
}


def policy(api: httpx.Client, name: str = "p", **fields: Any) -> str:
    body = {"name": name, "enabled": True, **fields}
    response = api.post("/policies", json=body)
    assert response.status_code == 201, response.text
    policy_id: str = response.json()["id"]
    return policy_id


def test_monitor_creates_then_replaces(api: httpx.Client) -> None:
    first, second = policy(api, "a"), policy(api, "b")
    run_id = "5f1c0a2e-1111-4d2b-9c3e-0123456789ab:train:0"
    created = api.post(
        f"/runs/{run_id}/monitor", json={"policy_id": first, "metadata": {"team": "x"}}
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert set(body) >= RUN_FIELDS
    assert body["run_id"] == run_id
    assert body["status"] == "monitoring"
    assert body["metadata"] == {"team": "x"}

    again = api.post(f"/runs/{run_id}/monitor", json={"policy_id": second})
    assert again.status_code == 200
    assert again.json()["policy_id"] == second
    assert again.json()["metadata"] == {}
    assert api.get(f"/runs/{run_id}").json()["policy_id"] == second


def test_inline_policy(api: httpx.Client) -> None:
    inline = {"enabled": True, "max_attempts": 7}
    response = api.post("/runs/r:train:1/monitor", json={"policy": inline})
    assert response.status_code == 201, response.text
    policy_id = response.json()["policy_id"]
    assert api.get(f"/policies/{policy_id}").json()["max_attempts"] == 7

    inline["max_attempts"] = 2
    again = api.post("/runs/r:train:1/monitor", json={"policy": inline})
    assert again.json()["policy_id"] == policy_id
    assert api.get(f"/policies/{policy_id}").json()["max_attempts"] == 2


def test_monitor_refusals_change_nothing(api: httpx.Client) -> None:
    disabled = policy(api, "off", enabled=False)
    cases = [
        ({"policy_id": "missing"}, 404, "policy_not_found"),
        ({"policy_id": disabled}, 409, "recovery_disabled"),
        ({"policy": {"max_attempts": 2}}, 409, "recovery_disabled"),
        ({}, 422, "validation_error"),
        ({"policy_id": disabled, "policy": {"enabled": True}}, 422, "validation_error"),
        (
            {"policy": {"enabled": True, "backoff_ms": 10, "max_backoff_ms": 5}},
            422,
            "validation_error",
        ),
        ({"policy_id": disabled, "metadata": "not an object"}, 422, "validation_error"),
    ]
    for body, status, code in cases:
        response = api.post("/runs/r1/monitor", json=body)
        assert (response.status_code, response.json()["error"]) == (status, code), body
    assert api.get("/runs").json()["total"] == 0
    assert len(api.get("/policies").json()["items"]) == 1


def test_list_filters_and_pages(api: httpx.Client) -> None:
    policy_id = policy(api)
    for index in range(5):
        api.post(f"/runs/run-{index}/monitor", json={"policy_id": policy_id})
    api.delete("/runs/run-4/monitor")

    page = api.get("/runs", params={"limit": 2, "offset": 1}).json()
    assert [r["run_id"] for r in page["items"]] == ["run-1", "run-2"]
    assert page["total"] == 5
    stopped = api.get("/runs", params={"status": "stopped"}).json()
    assert [r["run_id"] for r in stopped["items"]] == ["run-4"]
    bad = api.get("/runs", params={"status": "sleeping"})
    assert bad.status_code == 422
    assert bad.json()["error"] == "validation_error"


def test_stop_and_resume(api: httpx.Client) -> None:
    policy_id = policy(api)
    api.post("/runs/r1/monitor", json={"policy_id": policy_id})
    assert api.delete("/runs/r1/monitor").status_code == 204
    assert api.get("/runs/r1").json()["status"] == "stopped"
    resumed = api.post("/runs/r1/monitor", json={"policy_id": policy_id})
    assert resumed.status_code == 200
    assert resumed.json()["status"] == "monitoring"


def test_unknown_run(api: httpx.Client) -> None:
    for method, path in [
        ("GET", "/runs/nope"),
        ("DELETE", "/runs/nope/monitor"),
        ("POST", "/runs/nope/recover"),
        ("GET", "/runs/nope/recoveries"),
    ]:
        response = api.request(method, path)
        assert response.status_code == 404, path
        assert response.json()["error"] == "run_not_found"
    missing = api.get("/recoveries/nope")
    assert missing.json()["error"] == "recovery_not_found"


def test_manual_recovery_is_refused_while_one_is_active(api: httpx.Client) -> None:
    policy_id = policy(api, poll_interval_ms=3_600_000)
    api.post("/runs/r1/monitor", json={"policy_id": policy_id})
    api.delete("/runs/r1/monitor")
    body = {"checkpoint_path": "tinker://r1/weights/a", "restore_optimizer": False}
    first = api.post("/runs/r1/recover", json=body)
    assert first.status_code == 202, first.text
    recovery = first.json()
    assert recovery["trigger"] == "manual"
    assert recovery["checkpoint_path"] == body["checkpoint_path"]
    assert recovery["restore_optimizer"] is False

    second = api.post("/runs/r1/recover")
    assert second.status_code == 409
    assert second.json()["error"] == "already_pending"
    bad = api.post(
        "/runs/r1/recover", json={"checkpoint_path": "tinker://r1/sampler_weights/a"}
    )
    assert bad.status_code == 422
    listed = api.get("/runs/r1/recoveries").json()["items"]
    assert [r["id"] for r in listed] == [recovery["id"]]


def test_survives_a_restart(make_service: Any) -> None:
    first = make_service()
    with httpx.Client(base_url=first.url) as api:
        policy_id = policy(api)
        api.post(
            "/runs/a:train:0/monitor",
            json={"policy_id": policy_id, "metadata": {"k": 1}},
        )
    first.stop()
    second = make_service()
    with httpx.Client(base_url=second.url) as api:
        run = api.get("/runs/a:train:0").json()
        assert run["metadata"] == {"k": 1}
        assert run["policy_id"] == policy_id
        assert api.get(f"/policies/{policy_id}").status_code == 200


def test_health_and_readiness(api: httpx.Client) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "database": True, "workers": True}
    assert "recovery_polls_total" in api.get("/metrics").text


def test_values_the_database_cannot_store_are_refused(api: httpx.Client) -> None:
    policy_id = policy(api)
    bodies = [
        ("/policies", {"name": "a\x00b"}),
        ("/runs/r1/monitor", {"policy_id": policy_id, "metadata": {"k": "v\x00"}}),
        ("/runs/r1/monitor", {"policy_id": policy_id, "metadata": {"k\x00": 1}}),
    ]
    for path, body in bodies:
        response = api.post(path, json=body)
        assert response.status_code == 422, (path, body)
        assert response.json()["error"] == "validation_error"
    infinite = f'{{"policy_id": "{policy_id}", "metadata": {{"x": 1e400}}}}'
    response = api.post(
        "/runs/r1/monitor",
        content=infinite,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422
    for path in ("/runs/a%00b", "/policies/a%00b", "/recoveries/a%00b"):
        response = api.get(path)
        assert response.status_code == 422, path
        assert response.json()["error"] == "validation_error"
    assert api.get("/runs").json()["total"] == 0
