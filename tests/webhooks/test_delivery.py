"""Delivery over real loopback HTTP: signing, retries, refusals, restarts."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import timedelta
from ipaddress import ip_address
from typing import Any

import httpx
import pytest

from app.storage.db import (
    SessionFactory,
    create_engine,
    session_factory,
    transaction,
)
from app.storage.models import WebhookDelivery
from app.storage.types import utcnow
from app.webhooks import targets
from app.webhooks.delivery import MAX_BACKOFF_MS, WebhookDispatcher, backoff_ms
from app.webhooks.signing import verify
from app.webhooks.targets import IPAddress
from tests.webhooks.helpers import (
    Receiver,
    all_deliveries,
    enqueue,
    events,
    load,
    make_settings,
    wait_until,
)

SECRET = "whsec-test-secret"
Receivers = Callable[..., Receiver]


def status_is(sessions: SessionFactory, delivery_id: str, status: str) -> Any:
    async def check() -> bool:
        return (await load(sessions, delivery_id)).status == status

    return check


async def test_a_signed_delivery_carries_the_stored_body_and_headers(
    sessions: SessionFactory, receivers: Receivers
) -> None:
    receiver = receivers()
    delivery_id = await enqueue(sessions, f"{receiver.url}/hooks/recovered")
    dispatcher = WebhookDispatcher(sessions, make_settings(webhook_secret=SECRET))

    try:
        assert await dispatcher.drain() == 1
    finally:
        await dispatcher.stop()

    row = await load(sessions, delivery_id)
    [seen] = receiver.requests
    assert seen.path == "/hooks/recovered"
    assert seen.body == row.body.encode("utf-8")
    assert verify(seen.body, SECRET, seen.headers["x-recovery-signature"])
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["x-recovery-delivery"] == delivery_id
    assert seen.headers["x-recovery-event"] == "recovered"
    assert seen.headers["user-agent"] == "tinker-recovery"
    assert (row.status, row.attempts, row.last_error) == ("delivered", 1, None)
    assert row.delivered_at is not None and row.claim_token is None
    [event] = await events(sessions)
    assert event.type == "webhook_delivered"
    assert event.data["delivery_id"] == delivery_id


async def test_no_signature_header_without_a_secret(
    sessions: SessionFactory, receivers: Receivers
) -> None:
    receiver = receivers()
    await enqueue(sessions, receiver.url)
    dispatcher = WebhookDispatcher(sessions, make_settings(webhook_secret=None))

    try:
        assert await dispatcher.drain() == 1
    finally:
        await dispatcher.stop()

    [seen] = receiver.requests
    assert "x-recovery-signature" not in seen.headers


async def test_a_failing_receiver_is_retried_with_backoff_until_it_answers(
    sessions: SessionFactory, receivers: Receivers
) -> None:
    receiver = receivers(statuses=[500, 502])
    settings = make_settings(webhook_backoff_ms=100, webhook_max_attempts=5)
    dispatcher = WebhookDispatcher(sessions, settings)
    await dispatcher.start()
    delivery_id = await enqueue(sessions, receiver.url)
    dispatcher.notify()

    try:
        await wait_until(status_is(sessions, delivery_id, "delivered"))
    finally:
        await dispatcher.stop()

    first, second, third = (seen.at for seen in receiver.requests)
    assert second - first >= 0.1
    assert third - second >= 0.2
    row = await load(sessions, delivery_id)
    assert (row.attempts, row.last_error) == (3, None)
    assert {seen.headers["x-recovery-delivery"] for seen in receiver.requests} == {
        delivery_id
    }


async def test_a_receiver_that_always_fails_ends_failed_with_an_event(
    sessions: SessionFactory, receivers: Receivers
) -> None:
    receiver = receivers(status=503)
    port = receiver.url.rsplit(":", 1)[1]
    url = f"http://user:pw@127.0.0.1:{port}/hook?token=abc"
    dispatcher = WebhookDispatcher(sessions, make_settings(webhook_max_attempts=3))
    await dispatcher.start()
    delivery_id = await enqueue(sessions, url, kind="recovery_failed")
    dispatcher.notify()

    try:
        await wait_until(status_is(sessions, delivery_id, "failed"))
    finally:
        await dispatcher.stop()

    assert len(receiver.requests) == 3
    row = await load(sessions, delivery_id)
    assert row.attempts == 3
    assert row.last_error == "the receiver answered HTTP 503"
    [event] = await events(sessions)
    assert event.type == "webhook_failed"
    assert (event.run_id, event.recovery_id) == ("run-1", None)
    assert event.data == {
        "delivery_id": delivery_id,
        "kind": "recovery_failed",
        "url": f"http://127.0.0.1:{port}/hook",
        "attempts": 3,
        "error": "the receiver answered HTTP 503",
    }


@pytest.mark.parametrize(
    "options", [{"statuses": [307]}, {"hold": 1}], ids=["redirect", "timeout"]
)
async def test_redirects_and_timeouts_count_as_failures(
    sessions: SessionFactory, receivers: Receivers, options: dict[str, Any]
) -> None:
    receiver = receivers(**options)
    delivery_id = await enqueue(sessions, f"{receiver.url}/hook")
    settings = make_settings(webhook_timeout_ms=200, webhook_backoff_ms=1)
    dispatcher = WebhookDispatcher(sessions, settings)
    await dispatcher.start()

    try:
        await wait_until(status_is(sessions, delivery_id, "delivered"))
    finally:
        await dispatcher.stop()

    assert [seen.path for seen in receiver.requests] == ["/hook", "/hook"]
    assert (await load(sessions, delivery_id)).attempts == 2


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_private_targets_are_refused_at_once_unless_allowed(
    sessions: SessionFactory, receivers: Receivers, host: str
) -> None:
    receiver = receivers()
    url = receiver.url.replace("127.0.0.1", host)
    delivery_id = await enqueue(sessions, url)
    settings = make_settings(webhook_allow_private=False, webhook_max_attempts=5)
    dispatcher = WebhookDispatcher(sessions, settings)

    try:
        assert await dispatcher.drain() == 0
    finally:
        await dispatcher.stop()

    assert receiver.requests == []
    row = await load(sessions, delivery_id)
    assert (row.status, row.attempts) == ("failed", 1)
    assert row.last_error is not None and "ALLOW_PRIVATE" in row.last_error
    [event] = await events(sessions)
    assert event.type == "webhook_failed"


async def test_pending_deliveries_are_sent_by_a_fresh_dispatcher(
    sessions: SessionFactory, receivers: Receivers
) -> None:
    receiver = receivers()
    ids = {await enqueue(sessions, receiver.url) for _ in range(3)}
    dispatcher = WebhookDispatcher(sessions, make_settings())
    await dispatcher.start()

    try:
        await wait_until(lambda: _all_delivered(sessions))
    finally:
        await dispatcher.stop()

    assert {seen.headers["x-recovery-delivery"] for seen in receiver.requests} == ids


async def test_a_stopped_dispatcher_hands_its_delivery_to_the_next(
    sessions: SessionFactory, receivers: Receivers
) -> None:
    receiver = receivers(hold=1)
    delivery_id = await enqueue(sessions, receiver.url)
    first = WebhookDispatcher(sessions, make_settings())
    await first.start()
    await wait_until(_received(receiver, 1))

    started = time.monotonic()
    await first.stop()
    assert time.monotonic() - started < 1.0
    row = await load(sessions, delivery_id)
    assert (row.status, row.claim_token, row.attempts) == ("pending", None, 0)

    second = WebhookDispatcher(sessions, make_settings())
    try:
        assert await second.drain() == 1
    finally:
        await second.stop()
    assert (await load(sessions, delivery_id)).status == "delivered"


async def test_a_lapsed_lease_lets_another_dispatcher_take_over(
    sessions: SessionFactory, receivers: Receivers
) -> None:
    receiver = receivers()
    delivery_id = await enqueue(sessions, receiver.url)
    await _leave_claimed(sessions, delivery_id, lease_s=0.5)

    alive = WebhookDispatcher(sessions, make_settings())
    try:
        assert await alive.drain() == 0
        await asyncio.sleep(0.6)
        assert await alive.drain() == 1
    finally:
        await alive.stop()
    assert len(receiver.requests) == 1


async def test_concurrent_dispatchers_deliver_each_webhook_once(
    sessions: SessionFactory, receivers: Receivers, database_url: str
) -> None:
    receiver = receivers(delay_s=0.01)
    ids = {await enqueue(sessions, receiver.url) for _ in range(40)}
    # A second engine stands for a second replica with its own connections.
    other_engine = create_engine(database_url)
    dispatchers = [
        WebhookDispatcher(each, make_settings(), batch_size=4)
        for each in (sessions, session_factory(other_engine))
    ]

    try:
        counts = await asyncio.gather(*(d.drain() for d in dispatchers))
    finally:
        for dispatcher in dispatchers:
            await dispatcher.stop()
        await other_engine.dispose()

    assert sum(counts) == 40
    assert all(counts), "both dispatchers should have taken part"
    delivered = [seen.headers["x-recovery-delivery"] for seen in receiver.requests]
    assert sorted(delivered) == sorted(ids)
    assert all(row.attempts == 1 for row in await all_deliveries(sessions))


async def test_the_loop_survives_an_unexpected_error(
    sessions: SessionFactory, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            raise RuntimeError("a bug in a transport")
        return httpx.Response(204)

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    delivery_id = await enqueue(sessions, "http://receiver.test/hook")
    dispatcher = WebhookDispatcher(sessions, make_settings(), client=client)
    await dispatcher.start()

    try:
        await wait_until(status_is(sessions, delivery_id, "delivered"))
    finally:
        await dispatcher.stop()
        await client.aclose()

    assert len(calls) == 2
    assert "webhooks.attempt_error" in caplog.messages


async def test_neither_the_secret_nor_a_signature_is_logged_or_stored(
    sessions: SessionFactory, receivers: Receivers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    receiver = receivers(statuses=[500], status=200)
    failing = receivers(status=500)
    await enqueue(sessions, receiver.url)
    await enqueue(sessions, failing.url)
    settings = make_settings(webhook_secret=SECRET, webhook_max_attempts=2)
    dispatcher = WebhookDispatcher(sessions, settings)
    await dispatcher.start()

    try:
        await wait_until(lambda: _all_settled(sessions))
    finally:
        await dispatcher.stop()

    signatures = {
        seen.headers["x-recovery-signature"]
        for seen in receiver.requests + failing.requests
    }
    forbidden = {SECRET, *signatures, *(s.removeprefix("sha256=") for s in signatures)}
    logged = " ".join(str(vars(record)) for record in caplog.records)
    stored = " ".join(
        str(vars(row))
        for row in [*await events(sessions), *await all_deliveries(sessions)]
    )
    assert {"webhooks.retrying", "webhooks.delivered", "webhooks.failed"} <= set(
        caplog.messages
    )
    for secret in forbidden:
        assert secret not in logged
        assert secret not in stored


async def test_a_checked_address_is_connected_to_with_the_name_kept(
    sessions: SessionFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def lookup(host: str) -> list[IPAddress]:
        assert host == "hooks.example.com"
        return [ip_address("2606:2800:220:1::1"), ip_address("93.184.216.34")]

    monkeypatch.setattr(targets, "lookup", lookup)
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            raise httpx.ConnectError("unreachable", request=request)
        return httpx.Response(200)

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    delivery_id = await enqueue(sessions, "https://hooks.example.com:8443/h?k=v")
    settings = make_settings(webhook_allow_private=False)
    dispatcher = WebhookDispatcher(sessions, settings, client=client)

    try:
        assert await dispatcher.drain() == 1
    finally:
        await dispatcher.stop()
        await client.aclose()

    assert [str(request.url) for request in seen] == [
        "https://[2606:2800:220:1::1]:8443/h?k=v",
        "https://93.184.216.34:8443/h?k=v",
    ]
    for request in seen:
        assert request.headers["host"] == "hooks.example.com:8443"
        assert request.extensions["sni_hostname"] == "hooks.example.com"
    assert (await load(sessions, delivery_id)).attempts == 1


async def test_a_name_that_now_resolves_inside_the_network_is_refused(
    sessions: SessionFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def lookup(host: str) -> list[IPAddress]:
        return [ip_address("10.0.0.8")]

    monkeypatch.setattr(targets, "lookup", lookup)
    client = httpx.AsyncClient(transport=httpx.MockTransport(_never_called))
    delivery_id = await enqueue(sessions, "https://hooks.example.com/h")
    settings = make_settings(webhook_allow_private=False)
    dispatcher = WebhookDispatcher(sessions, settings, client=client)

    try:
        assert await dispatcher.drain() == 0
    finally:
        await dispatcher.stop()
        await client.aclose()

    row = await load(sessions, delivery_id)
    assert (row.status, row.attempts) == ("failed", 1)
    assert row.last_error is not None and "10.0.0.8" in row.last_error


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff_ms(1_000, n) for n in (1, 2, 3, 4)] == [1_000, 2_000, 4_000, 8_000]
    assert backoff_ms(1_000, 60) == MAX_BACKOFF_MS
    assert backoff_ms(1_000, 10_000) == MAX_BACKOFF_MS


async def _leave_claimed(
    sessions: SessionFactory, delivery_id: str, lease_s: float
) -> None:
    """Claim a delivery as a dispatcher that then died would have left it."""
    async with transaction(sessions) as session:
        row = await session.get(WebhookDelivery, delivery_id)
        assert row is not None
        row.claim_token = "a-dispatcher-that-died"
        row.lease_until = utcnow() + timedelta(seconds=lease_s)


def _never_called(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"no request was expected, got {request.url}")


def _received(receiver: Receiver, count: int) -> Any:
    async def check() -> bool:
        return len(receiver.requests) >= count

    return check


async def _all_delivered(sessions: SessionFactory) -> bool:
    return all(row.status == "delivered" for row in await all_deliveries(sessions))


async def _all_settled(sessions: SessionFactory) -> bool:
    return all(row.status != "pending" for row in await all_deliveries(sessions))
