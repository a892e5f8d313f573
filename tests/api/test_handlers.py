"""How errors of every kind are rendered."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from sqlalchemy.exc import OperationalError

from app.api import handlers
from tests.support.servers import serve


def failing_app() -> FastAPI:
    app = FastAPI()
    handlers.install(app)

    @app.get("/locked")
    async def locked() -> None:
        raise OperationalError("UPDATE runs", {}, Exception("lock timeout"))

    @app.get("/broken")
    async def broken() -> None:
        raise RuntimeError("a secret detail that must not leak")

    return app


def test_a_busy_database_is_a_503_to_retry() -> None:
    with serve(failing_app()) as server:
        response = httpx.get(f"{server.url}/locked")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"] == "unavailable"


def test_an_unexpected_error_says_nothing_of_its_cause() -> None:
    with serve(failing_app()) as server:
        response = httpx.get(f"{server.url}/broken")
    assert response.status_code == 500
    assert response.json() == {
        "error": "internal_error",
        "detail": "the service failed to answer",
    }
