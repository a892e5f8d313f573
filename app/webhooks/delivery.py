"""Delivering stored webhooks: claim the due ones, POST them, record the outcome.

Deliveries are at least once. A dispatcher claims a batch of due rows with a
token and a lease, posts each stored body, and writes the outcome only where
the row still carries its token. A dispatcher stopped mid-POST hands its rows
back; one that dies leaves them leased until the lease lapses. Either way the
same delivery may reach a receiver twice, with the same `X-Recovery-Delivery`
id to tell. Nothing here touches a run or a recovery: a receiver that fails
can only fail its own delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import httpx
from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.config import Settings
from app.events.store import append_event
from app.storage.db import SessionFactory, transaction
from app.storage.models import WebhookDelivery
from app.storage.types import utcnow
from app.webhooks.outbox import DeliveryStatus
from app.webhooks.signing import SIGNATURE_HEADER, sign
from app.webhooks.targets import (
    IPAddress,
    public_addresses,
    redact_url,
    url_host,
    url_secrets,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

USER_AGENT = "tinker-recovery"
MAX_BACKOFF_MS = 5 * 60 * 1000
BATCH_SIZE = 16
IDLE_WAIT_S = 1.0
MIN_WAIT_S = 0.01
MAX_ERROR_CHARS = 500


@dataclass(frozen=True)
class Outcome:
    """What one attempt at a delivery came to."""

    delivered: bool
    error: str | None = None
    permanent: bool = False


def backoff_ms(base_ms: int, attempts: int) -> int:
    """The wait before the next attempt after `attempts` failed ones, capped."""
    exponent = min(max(attempts - 1, 0), 32)
    return int(min(base_ms * 2**exponent, MAX_BACKOFF_MS))


def due(now: datetime) -> tuple[ColumnElement[bool], ...]:
    """The conditions of a pending delivery that nobody holds and is due."""
    return (
        col(WebhookDelivery.status) == DeliveryStatus.pending,
        col(WebhookDelivery.next_attempt_at) <= now,
        or_(
            col(WebhookDelivery.lease_until).is_(None),
            col(WebhookDelivery.lease_until) < now,
        ),
    )


@dataclass(frozen=True)
class Claimed:
    """A delivery this dispatcher holds, as it stood when it was claimed."""

    id: str
    kind: str
    url: str
    body: str
    run_id: str
    recovery_id: str | None
    attempts: int
    claim_token: str


CLAIMED_COLUMNS = (
    col(WebhookDelivery.id),
    col(WebhookDelivery.kind),
    col(WebhookDelivery.url),
    col(WebhookDelivery.body),
    col(WebhookDelivery.run_id),
    col(WebhookDelivery.recovery_id),
    col(WebhookDelivery.attempts),
    col(WebhookDelivery.claim_token),
)


class WebhookDispatcher:
    """Delivers the webhook outbox in the background, or on demand with `drain`."""

    def __init__(
        self,
        sessions: SessionFactory,
        settings: Settings,
        *,
        client: httpx.AsyncClient | None = None,
        batch_size: int = BATCH_SIZE,
        idle_wait_s: float = IDLE_WAIT_S,
    ) -> None:
        self._sessions = sessions
        self._settings = settings
        self._client = client
        self._owns_client = client is None
        self._batch_size = batch_size
        self._idle_wait_s = idle_wait_s
        self._timeout_s = settings.webhook_timeout_ms / 1000
        # A claim outlives the longest attempt, so a live dispatcher never
        # loses a row it is still posting.
        self._lease = timedelta(
            milliseconds=max(settings.lease_ms, 2 * settings.webhook_timeout_ms)
        )
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Future[Any]] = set()

    async def start(self) -> None:
        """Start delivering in the background."""
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="webhook-dispatcher")
        logger.info("webhooks.started")

    async def stop(self) -> None:
        """Stop at once; deliveries in flight are handed back for a later try."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        if self._writes:
            await asyncio.wait(self._writes)
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None
        if task is not None:
            logger.info("webhooks.stopped")

    def notify(self) -> None:
        """Wake the dispatcher now, say after a commit that enqueued something."""
        loop = self._loop
        if loop is None or _running_loop() is loop:
            self._wake.set()
            return
        # Called from another thread: the event belongs to the dispatcher's loop.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._wake.set)

    async def drain(self) -> int:
        """Deliver until nothing is due, retries that fall due included; count 2xx."""
        delivered = 0
        while batch := await self._claim():
            results = await asyncio.gather(*(self._deliver(row) for row in batch))
            delivered += sum(results)
        return delivered

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.drain()
                wait_s = await self._next_wait()
            except Exception:
                logger.exception("webhooks.loop_error")
                wait_s = self._idle_wait_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_s)

    async def _next_wait(self) -> float:
        now = utcnow()
        async with self._sessions() as session:
            connection = await session.connection()
            nearest = await connection.scalar(
                select(func.min(col(WebhookDelivery.next_attempt_at))).where(
                    col(WebhookDelivery.status) == DeliveryStatus.pending,
                    or_(
                        col(WebhookDelivery.lease_until).is_(None),
                        col(WebhookDelivery.lease_until) < now,
                    ),
                )
            )
        if nearest is None:
            return self._idle_wait_s
        wait_s = (nearest - now).total_seconds()
        return min(max(wait_s, MIN_WAIT_S), self._idle_wait_s)

    async def _claim(self) -> list[Claimed]:
        """Take up to a batch of due deliveries under a fresh token and lease."""
        token = str(uuid.uuid4())
        now = utcnow()
        async with transaction(self._sessions) as session:
            connection = await session.connection()
            # SKIP LOCKED lets dispatchers on Postgres pick disjoint rows; SQLite
            # ignores it and serialises the whole transaction instead.
            picked = await connection.scalars(
                select(col(WebhookDelivery.id))
                .where(*due(now))
                .order_by(col(WebhookDelivery.next_attempt_at))
                .limit(self._batch_size)
                .with_for_update(skip_locked=True)
            )
            ids = list(picked.all())
            if not ids:
                return []
            await connection.execute(
                update(WebhookDelivery)
                .where(col(WebhookDelivery.id).in_(ids), *due(now))
                .values(claim_token=token, lease_until=now + self._lease)
            )
            claimed = await connection.execute(
                select(*CLAIMED_COLUMNS).where(
                    col(WebhookDelivery.claim_token) == token
                )
            )
            return [Claimed(**row) for row in claimed.mappings()]

    async def _deliver(self, row: Claimed) -> bool:
        """Attempt one claimed delivery and record how it went; True when 2xx."""
        try:
            outcome = await self._attempt(row)
        except asyncio.CancelledError:
            await self._finish(self._release(row))
            raise
        try:
            return await self._finish(self._record(row, outcome))
        except Exception:
            logger.exception("webhooks.record_error", extra=_ids(row))
            return False

    async def _finish(self, write: Coroutine[Any, Any, T]) -> T:
        """Run a state write that a cancellation of the caller cannot cut short."""
        # `stop` waits for these, so the engine outlives every write in flight.
        task = asyncio.ensure_future(write)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        return await asyncio.shield(task)

    async def _attempt(self, row: Claimed) -> Outcome:
        try:
            async with asyncio.timeout(self._timeout_s):
                addresses = await self._addresses(row.url)
                status = await self._post(row, addresses)
        except (ValueError, httpx.InvalidURL) as exc:
            # A refused or malformed target will not get better by waiting.
            return Outcome(delivered=False, error=str(exc), permanent=True)
        except (TimeoutError, httpx.TimeoutException):
            limit_ms = self._settings.webhook_timeout_ms
            return Outcome(delivered=False, error=f"timed out after {limit_ms} ms")
        except (httpx.HTTPError, OSError) as exc:
            return Outcome(delivered=False, error=_describe(exc, row.url))
        except Exception as exc:
            logger.exception("webhooks.attempt_error", extra=_ids(row))
            return Outcome(delivered=False, error=_describe(exc, row.url))
        if 200 <= status < 300:
            return Outcome(delivered=True)
        return Outcome(delivered=False, error=f"the receiver answered HTTP {status}")

    async def _addresses(self, url: str) -> list[IPAddress]:
        """Where to connect: checked public addresses, or [] to let httpx resolve."""
        if self._settings.webhook_allow_private:
            url_host(url)
            return []
        return await public_addresses(url)

    async def _post(self, row: Claimed, addresses: Sequence[IPAddress]) -> int:
        """POST the stored body, trying each checked address in turn; the status."""
        client = self._http()
        requests = [self._request(client, row, address) for address in addresses]
        if not requests:
            requests = [self._request(client, row, None)]
        for request in requests[:-1]:
            try:
                return await self._send(client, request)
            except httpx.ConnectError:
                continue
        return await self._send(client, requests[-1])

    async def _send(self, client: httpx.AsyncClient, request: httpx.Request) -> int:
        # Streamed and closed unread: the receiver's answer is its status alone,
        # and a large body is never pulled into memory.
        response = await client.send(request, stream=True, follow_redirects=False)
        await response.aclose()
        return response.status_code

    def _request(
        self,
        client: httpx.AsyncClient,
        row: Claimed,
        address: IPAddress | None,
    ) -> httpx.Request:
        body = row.body.encode("utf-8")
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Recovery-Delivery": row.id,
            "X-Recovery-Event": row.kind,
        }
        secret = self._settings.webhook_secret
        if secret is not None:
            headers[SIGNATURE_HEADER] = sign(body, secret.get_secret_value())
        url = httpx.URL(row.url)
        extensions: dict[str, Any] = {}
        if address is not None:
            # Connect to the address that was checked, not to a second lookup
            # that a rebinding DNS server could answer differently; the name
            # still goes in Host and in TLS (SNI and certificate checks).
            headers["Host"] = url.netloc.decode("ascii")
            extensions["sni_hostname"] = url.raw_host.decode("ascii")
            url = url.copy_with(host=str(address))
        return client.build_request(
            "POST",
            url,
            content=body,
            headers=headers,
            timeout=self._timeout_s,
            extensions=extensions,
        )

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                follow_redirects=False, timeout=self._timeout_s
            )
        return self._client

    async def _record(self, row: Claimed, outcome: Outcome) -> bool:
        attempts = row.attempts + 1
        if outcome.delivered:
            await self._mark_delivered(row, attempts)
            return True
        error = (outcome.error or "unknown error")[:MAX_ERROR_CHARS]
        if outcome.permanent or attempts >= self._settings.webhook_max_attempts:
            await self._mark_failed(row, attempts, error)
        else:
            await self._reschedule(row, attempts, error)
        return False

    async def _mark_delivered(self, row: Claimed, attempts: int) -> None:
        now = utcnow()
        async with transaction(self._sessions) as session:
            values = {"delivered_at": now, "last_error": None}
            status = DeliveryStatus.delivered
            if not await _write(session, row, status, attempts, **values):
                return
            await append_event(
                session,
                "webhook_delivered",
                row.run_id,
                recovery_id=row.recovery_id,
                data=_event_data(row, attempts),
            )
        logger.info("webhooks.delivered", extra=_ids(row, attempts=attempts))

    async def _mark_failed(self, row: Claimed, attempts: int, error: str) -> None:
        async with transaction(self._sessions) as session:
            status = DeliveryStatus.failed
            if not await _write(session, row, status, attempts, last_error=error):
                return
            await append_event(
                session,
                "webhook_failed",
                row.run_id,
                recovery_id=row.recovery_id,
                data={**_event_data(row, attempts), "error": error},
            )
        extra = _ids(row, attempts=attempts, error=error)
        logger.error("webhooks.failed", extra=extra)

    async def _reschedule(self, row: Claimed, attempts: int, error: str) -> None:
        delay_ms = backoff_ms(self._settings.webhook_backoff_ms, attempts)
        next_at = utcnow() + timedelta(milliseconds=delay_ms)
        async with transaction(self._sessions) as session:
            status = DeliveryStatus.pending
            values = {"next_attempt_at": next_at, "last_error": error}
            if not await _write(session, row, status, attempts, **values):
                return
        extra = _ids(row, attempts=attempts, error=error, delay_ms=delay_ms)
        logger.warning("webhooks.retrying", extra=extra)

    async def _release(self, row: Claimed) -> None:
        """Hand an interrupted delivery back, due at once, its attempt uncounted."""
        try:
            async with transaction(self._sessions) as session:
                connection = await session.connection()
                await connection.execute(
                    update(WebhookDelivery)
                    .where(*_held(row))
                    .values(claim_token=None, lease_until=None)
                )
        except Exception:
            # The lease lapses on its own; until then nobody else takes it.
            logger.exception("webhooks.release_error", extra=_ids(row))


async def _write(
    session: AsyncSession,
    row: Claimed,
    status: DeliveryStatus,
    attempts: int,
    **values: Any,
) -> bool:
    """Store an outcome and drop the claim, only while the claim is still ours."""
    statement = (
        update(WebhookDelivery)
        .where(*_held(row))
        .values(
            status=status,
            attempts=attempts,
            claim_token=None,
            lease_until=None,
            **values,
        )
    )
    connection = await session.connection()
    result = await connection.execute(statement)
    if result.rowcount == 1:
        return True
    logger.warning("webhooks.claim_lost", extra=_ids(row))
    return False


def _held(row: Claimed) -> tuple[ColumnElement[bool], ...]:
    return (
        col(WebhookDelivery.id) == row.id,
        col(WebhookDelivery.claim_token) == row.claim_token,
    )


def _event_data(row: Claimed, attempts: int) -> dict[str, Any]:
    return {
        "delivery_id": row.id,
        "kind": row.kind,
        "url": redact_url(row.url),
        "attempts": attempts,
    }


def _ids(row: Claimed, **more: Any) -> dict[str, Any]:
    """The context of a log line: never the URL's secrets, the body or a signature."""
    return {
        "delivery_id": row.id,
        "kind": row.kind,
        "run_id": row.run_id,
        "recovery_id": row.recovery_id,
        **more,
    }


def _describe(exc: BaseException, url: str) -> str:
    """A short error text for `exc` that never repeats the URL's secrets."""
    text = str(exc) or "no detail"
    for secret in url_secrets(url):
        text = text.replace(secret, "***")
    return f"{type(exc).__name__}: {text}"


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
