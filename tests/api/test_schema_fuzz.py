"""Property-based requests from the served schema: no 500, no answer off-schema."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app
from app.tinker.fake import create_fake_tinker_app
from tests.conftest import service_settings
from tests.support.servers import ThreadedServer, serve

TOKEN = "fuzz-token"
SCHEMA = Path(__file__).resolve().parents[2] / "openapi.json"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]

schema = schemathesis.openapi.from_path(str(SCHEMA)).exclude(
    # An endless stream: its framing is tested over real HTTP elsewhere.
    path="/events/stream"
)


@pytest.fixture(scope="module")
def fuzzed_service(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ThreadedServer]:
    """One service on SQLite for every generated request of this module."""
    folder = tmp_path_factory.mktemp("fuzz")
    with serve(create_fake_tinker_app()) as tinker:
        settings_ = service_settings(
            f"sqlite+aiosqlite:///{folder}/recovery.db", tinker.url, api_tokens=TOKEN
        )
        with serve(create_app(settings_)) as server:
            yield server


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_input_breaks_the_api(
    case: schemathesis.Case, fuzzed_service: ThreadedServer
) -> None:
    case.call_and_validate(
        base_url=fuzzed_service.url,
        checks=CHECKS,
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
