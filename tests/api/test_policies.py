"""The policy endpoints: fields, defaults, validation and error codes."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

DEFAULTS = {
    "enabled": False,
    "checkpoint_strategy": "latest",
    "checkpoint_path": None,
    "best_metric": None,
    "best_mode": "min",
    "fallback_to_previous": True,
    "restore_optimizer": True,
    "poll_interval_ms": 30000,
    "max_attempts": 3,
    "backoff_ms": 5000,
    "max_backoff_ms": 60000,
    "jitter": "none",
    "attempt_timeout_ms": 600000,
    "on_recovery_url": None,
    "on_failure_url": None,
    "restart_mode": "service",
    "on_restart_url": None,
}


def create(api: httpx.Client, **fields: Any) -> dict[str, Any]:
    response = api.post("/policies", json={"name": "default", **fields})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def policy_count(api: httpx.Client) -> int:
    return len(api.get("/policies").json()["items"])


def test_create_fills_every_default(api: httpx.Client) -> None:
    body = create(api)
    assert {k: body[k] for k in DEFAULTS} == DEFAULTS
    assert body["name"] == "default"
    assert body["id"]
    assert api.get(f"/policies/{body['id']}").json() == body


def test_list_replace_and_delete(api: httpx.Client) -> None:
    first = create(api, name="a")
    create(api, name="b", enabled=True, jitter="full")
    assert [p["name"] for p in api.get("/policies").json()["items"]] == ["a", "b"]

    replaced = api.put(
        f"/policies/{first['id']}", json={"name": "a2", "max_attempts": 5}
    )
    assert replaced.status_code == 200
    assert replaced.json()["max_attempts"] == 5
    assert replaced.json()["name"] == "a2"
    assert replaced.json()["backoff_ms"] == 5000

    assert api.delete(f"/policies/{first['id']}").status_code == 204
    missing = api.get(f"/policies/{first['id']}")
    assert missing.status_code == 404
    assert missing.json()["error"] == "policy_not_found"


@pytest.mark.parametrize(
    "fields",
    [
        {"name": ""},
        {"name": "x" * 101},
        {"name": "x" * 1_000_000},
        {"poll_interval_ms": 99},
        {"max_attempts": 0},
        {"backoff_ms": 0},
        {"backoff_ms": 5000, "max_backoff_ms": 4999},
        {"checkpoint_strategy": "specific"},
        {"checkpoint_strategy": "latest", "checkpoint_path": "tinker://r/weights/a"},
        {
            "checkpoint_strategy": "specific",
            "checkpoint_path": "tinker://r/sampler_weights/a",
        },
        {"checkpoint_strategy": "specific", "checkpoint_path": "tinker://r/weights"},
        {"checkpoint_strategy": "specific", "checkpoint_path": "s3://r/weights/a"},
        {"checkpoint_strategy": "best"},
        {"checkpoint_strategy": "newest"},
        {"best_mode": "lowest"},
        {"jitter": "half"},
        {"enabled": "yes"},
        {"max_attempts": "3"},
        {"max_attempts": 2.5},
        {"poll_interval_ms": 2**40},
        {"on_recovery_url": "ftp://example.com/hook"},
        {"on_failure_url": "not a url"},
        {"restart_mode": "manual"},
        {"unknown_field": 1},
    ],
)
def test_bad_fields_are_refused_and_change_nothing(
    api: httpx.Client, fields: dict[str, Any]
) -> None:
    response = api.post("/policies", json={"name": "p", **fields})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "validation_error"
    assert isinstance(body["detail"], list) and body["detail"]
    assert policy_count(api) == 0


def test_missing_name_and_bad_json(api: httpx.Client) -> None:
    assert api.post("/policies", json={}).json()["error"] == "validation_error"
    broken = api.post(
        "/policies", content=b'{"name": ', headers={"content-type": "application/json"}
    )
    assert broken.status_code == 422
    assert broken.json()["error"] == "validation_error"
    assert policy_count(api) == 0


def test_specific_and_best_policies(api: httpx.Client) -> None:
    path = "tinker://abc-123:train:0/weights/step-10"
    specific = create(
        api, name="s", checkpoint_strategy="specific", checkpoint_path=path
    )
    assert specific["checkpoint_path"] == path
    best = create(api, name="b", checkpoint_strategy="best", best_metric="eval_loss")
    assert best["best_metric"] == "eval_loss"


def test_duplicate_name_is_a_conflict(api: httpx.Client) -> None:
    create(api, name="same")
    again = api.post("/policies", json={"name": "same"})
    assert again.status_code == 409
    assert again.json()["error"] == "policy_exists"
    other = create(api, name="other")
    renamed = api.put(f"/policies/{other['id']}", json={"name": "same"})
    assert renamed.json()["error"] == "policy_exists"
    assert api.get(f"/policies/{other['id']}").json()["name"] == "other"


def test_unknown_policy(api: httpx.Client) -> None:
    for method in ("GET", "PUT", "DELETE"):
        response = api.request(method, "/policies/nope", json={"name": "n"})
        assert response.status_code == 404
        assert response.json()["error"] == "policy_not_found"


def test_policy_in_use_cannot_be_deleted(api: httpx.Client) -> None:
    policy = create(api, enabled=True)
    api.post("/runs/r1/monitor", json={"policy_id": policy["id"]}).raise_for_status()
    refused = api.delete(f"/policies/{policy['id']}")
    assert refused.status_code == 409
    assert refused.json()["error"] == "policy_in_use"
    assert api.get(f"/policies/{policy['id']}").status_code == 200

    assert api.delete("/runs/r1/monitor").status_code == 204
    assert api.delete(f"/policies/{policy['id']}").status_code == 204
    assert api.get("/runs/r1").json()["policy_id"] is None


def test_private_webhook_targets_are_refused_unless_allowed(make_service: Any) -> None:
    server = make_service(webhook_allow_private=False)
    with httpx.Client(base_url=server.url) as api:
        for url in (
            "http://127.0.0.1:9/hook",
            "http://localhost/x",
            "http://10.0.0.8/",
        ):
            refused = api.post("/policies", json={"name": "p", "on_failure_url": url})
            assert refused.status_code == 422, url
            assert refused.json()["error"] == "validation_error"
        inline = {"policy": {"enabled": True, "on_recovery_url": "http://192.168.1.4/"}}
        assert api.post("/runs/r/monitor", json=inline).status_code == 422
        assert policy_count(api) == 0
        public = api.post(
            "/policies", json={"name": "p", "on_recovery_url": "https://example.com/h"}
        )
        assert public.status_code == 201
