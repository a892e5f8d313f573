"""Fixtures shared by the whole suite: databases, the fake Tinker, the service."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.main import create_app
from app.tinker.fake import create_fake_tinker_app
from tests.support.databases import database
from tests.support.servers import ThreadedServer, serve

TINKER_KEY = "tml-test-key-not-a-secret-0001"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """A fresh, empty database of each kind."""
    with database(request.param, str(tmp_path)) as url:
        yield url


@pytest.fixture
def fake_tinker() -> Iterator[ThreadedServer]:
    """The bundled fake Tinker on a loopback port."""
    with serve(create_fake_tinker_app()) as server:
        yield server


def service_settings(database_url: str, tinker_url: str, **overrides: Any) -> Settings:
    """Settings for a service under test: fast loops, loopback webhooks."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "tinker_base_url": tinker_url,
        "tinker_api_key": TINKER_KEY,
        "monitor_idle_ms": 200,
        "lease_ms": 3_000,
        "heartbeat_interval_ms": 500,
        "shutdown_grace_ms": 2_000,
        "webhook_allow_private": True,
        "webhook_backoff_ms": 50,
        "sse_keepalive_ms": 1_000,
        **overrides,
    }
    return Settings(**values)


@pytest.fixture
def make_service(database_url: str, fake_tinker: ThreadedServer) -> Iterator[Any]:
    """Start services on the test's database; each is stopped after the test."""
    started: list[ThreadedServer] = []

    def start(**overrides: Any) -> ThreadedServer:
        settings = service_settings(database_url, fake_tinker.url, **overrides)
        server = ThreadedServer(create_app(settings))
        server.start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture
def service(make_service: Any) -> ThreadedServer:
    server: ThreadedServer = make_service()
    return server


@pytest.fixture
def api(service: ThreadedServer) -> Iterator[httpx.Client]:
    """A client of the running service."""
    with httpx.Client(base_url=service.url, timeout=10) as client:
        yield client
