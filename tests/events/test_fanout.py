"""Many subscribers, a stalled one, and shutting down with streams open."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path

import httpx

from tests.events.conftest import (
    EventLog,
    Service,
    Starter,
    Stream,
    http_client,
    ids,
    open_stream,
)
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
STREAMS_PER_CLIENT = 20


async def open_streams(
    stack: AsyncExitStack, url: str, count: int, **params: int
) -> list[Stream]:
    """Open `count` streams at once; they stay open until `stack` closes."""
    # httpx slows down as one client holds more connections: spread them.
    clients = [
        await stack.enter_async_context(http_client(url))
        for _ in range(-(-count // STREAMS_PER_CLIENT))
    ]
    opening = (
        stack.enter_async_context(open_stream(clients[i // STREAMS_PER_CLIENT], params))
        for i in range(count)
    )
    return list(await asyncio.gather(*opening))


async def test_every_subscriber_gets_every_event_of_a_burst(
    log: EventLog, service: Service
) -> None:
    async with AsyncExitStack() as stack:
        # Resuming from the newest id (none yet) is the common reconnect.
        streams = await open_streams(stack, service.url, 200, after=0)

        written = await log.write_concurrently(writers=10, each=30)
        received = await asyncio.gather(*(s.take(300, within_s=40) for s in streams))

    assert len(written) == 300
    assert all(ids(messages) == written for messages in received)


async def test_a_subscriber_that_reads_nothing_holds_up_no_one(
    log: EventLog, start_service: Starter
) -> None:
    service = start_service(sse_buffer_size=4)
    # A tiny receive window makes the stalled client's socket fill quickly,
    # so the server really cannot write to it.
    stalled_socket = [(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)]
    stalled_transport = httpx.AsyncHTTPTransport(socket_options=stalled_socket)
    # More than the kernel will buffer for a socket (4 MiB here), so the
    # stalled stream's writes block for certain.
    payload = {"blob": "x" * 64_000}

    async with AsyncExitStack() as stack:
        fast_client = await stack.enter_async_context(http_client(service.url))
        slow_client = await stack.enter_async_context(
            http_client(service.url, transport=stalled_transport)
        )
        stalled = await stack.enter_async_context(open_stream(slow_client))
        fast = await stack.enter_async_context(open_stream(fast_client))

        written = await log.write(150, data=payload)
        assert ids(await fast.take(150, within_s=20)) == written
        assert service.broker.lagged_total >= 1

        assert ids(await stalled.take(150, within_s=20)) == written
        more = await log.write(3)
        assert ids(await stalled.take(3)) == more
        assert ids(await fast.take(3)) == more


async def test_stopping_the_broker_ends_open_streams_at_once(
    log: EventLog, service: Service
) -> None:
    written = await log.write(5)

    async with AsyncExitStack() as stack:
        streams = await open_streams(stack, service.url, 50, after=0)
        started = time.monotonic()
        await asyncio.to_thread(service.run, service.broker.stop())
        await asyncio.gather(*(s.rest(within_s=5) for s in streams))
        assert time.monotonic() - started < 2

    # Each stream ended cleanly, having sent a gap-free prefix of the log.
    assert all(ids(s.seen) == written[: len(s.seen)] for s in streams)
    started = time.monotonic()
    await asyncio.to_thread(service.server.stop)
    assert time.monotonic() - started < 2


async def test_the_service_exits_promptly_on_sigterm_with_open_streams(
    tmp_path: Path,
) -> None:
    # What is tested is uvicorn's shutdown, the same with either database.
    database_url = f"sqlite+aiosqlite:///{tmp_path}/events.db"
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.events.service",
        database_url,
        str(port),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        async with AsyncExitStack() as stack:
            url = f"http://127.0.0.1:{port}"
            await wait_until_serving(url)
            streams = await open_streams(stack, url, 50)

            process.send_signal(signal.SIGTERM)
            started = time.monotonic()
            await asyncio.gather(*(s.rest(within_s=5) for s in streams))
            # uvicorn shuts down gracefully, then re-raises the signal it caught.
            assert await asyncio.wait_for(process.wait(), 5) in (0, -signal.SIGTERM)
            assert time.monotonic() - started < 3
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def wait_until_serving(url: str) -> None:
    """Wait for a freshly started process to answer."""
    async with http_client(url) as client, asyncio.timeout(20):
        while True:
            try:
                if (await client.get("/events")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
