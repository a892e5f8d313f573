"""The committed schema is the served one, and it documents the errors."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from app.config import Settings
from app.main import create_app

COMMITTED = Path(__file__).resolve().parents[2] / "openapi.json"


def test_committed_schema_is_what_the_service_serves(api: httpx.Client) -> None:
    served = api.get("/openapi.json").json()
    committed = json.loads(COMMITTED.read_text())
    assert served == committed, (
        "openapi.json is stale: regenerate it with `tinker-recovery openapi`"
    )


def test_schema_does_not_depend_on_settings() -> None:
    plain = create_app(Settings(host="127.0.0.1")).openapi()
    guarded = create_app(Settings(host="127.0.0.1", api_tokens="t")).openapi()
    assert plain == guarded


def test_error_responses_are_documented() -> None:
    schema = json.loads(COMMITTED.read_text())
    error_ref = "#/components/schemas/ErrorBody"
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")) and path != "/readyz":
                    content = response["content"]["application/json"]["schema"]
                    assert content == {"$ref": error_ref}, (method, path, status)
    assert "409" in schema["paths"]["/policies"]["post"]["responses"]
    assert "404" in schema["paths"]["/runs/{run_id}"]["get"]["responses"]


def test_docs_are_open_without_a_token(make_service: object) -> None:
    server = make_service(api_tokens="secret-token")  # type: ignore[operator]
    with httpx.Client(base_url=server.url) as client:
        for path in ("/docs", "/redoc", "/openapi.json", "/healthz", "/readyz"):
            assert client.get(path).status_code == 200, path
        refused = client.get("/policies")
        assert refused.status_code == 401
        assert refused.json()["error"] == "unauthorized"
        assert "secret-token" not in refused.text
        wrong = client.get("/runs", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert client.get("/metrics").status_code == 401
        allowed = client.get(
            "/policies", headers={"Authorization": "Bearer secret-token"}
        )
        assert allowed.status_code == 200
