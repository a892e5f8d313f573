"""A fake Tinker on a loopback port for the whole session, reset per test."""

from collections.abc import AsyncIterator, Iterator

import pytest

from app.tinker.client import TinkerClient
from app.tinker.fake import create_fake_tinker_app
from app.tinker.fake_control import FakeTinkerControl
from tests.support.servers import ThreadedServer, serve

KEY = "tml-tinker-tests-0000000000000000"


@pytest.fixture(scope="session")
def fake_server() -> Iterator[ThreadedServer]:
    """One fake Tinker for the session; tests reset it through `fake`."""
    with serve(create_fake_tinker_app()) as server:
        yield server


@pytest.fixture
def fake(fake_server: ThreadedServer) -> Iterator[FakeTinkerControl]:
    """Control of the session's fake Tinker, emptied for this test."""
    with FakeTinkerControl(fake_server.url) as control:
        control.reset()
        yield control


@pytest.fixture(params=["aiohttp", "httpx"])
async def tinker(
    request: pytest.FixtureRequest, fake_server: ThreadedServer
) -> AsyncIterator[TinkerClient]:
    """Our client against the fake, over each transport it offers."""
    use_aiohttp = request.param == "aiohttp"
    async with TinkerClient(
        fake_server.url, KEY, timeout_s=5, use_aiohttp=use_aiohttp
    ) as client:
        yield client
