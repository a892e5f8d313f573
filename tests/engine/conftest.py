"""Fixtures for the recovery engine tests: a handle on the fake Tinker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.tinker.fake_control import FakeTinkerControl
from tests.support.servers import ThreadedServer


@pytest.fixture
def fake(fake_tinker: ThreadedServer) -> Iterator[FakeTinkerControl]:
    """Seeds, corrupts and breaks the fake Tinker the service talks to."""
    with FakeTinkerControl(fake_tinker.url) as control:
        yield control
