"""A recording webhook receiver and small helpers for the webhook tests."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.config import Settings
from app.storage.db import SessionFactory, transaction
from app.storage.models import Event, WebhookDelivery
from app.webhooks.outbox import enqueue_webhook

HOLD_LIMIT_S = 10.0
PAYLOAD = {"type": "recovered", "run_id": "run-1", "new_run_id": "run-2"}


@dataclass
class Received:
    """One request as the receiver saw it."""

    path: str
    body: bytes
    headers: dict[str, str]
    at: float


@dataclass
class Receiver:
    """A receiver that records every request and answers as it was told.

    `statuses` answers the first requests in turn, then `status` the rest;
    the first `hold` requests are kept waiting until `release` is set.
    """

    statuses: list[int] = field(default_factory=list)
    status: int = 200
    hold: int = 0
    delay_s: float = 0.0
    url: str = ""
    requests: list[Received] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    @property
    def app(self) -> Starlette:
        return Starlette(
            routes=[Route("/{path:path}", self._handle, methods=["POST", "GET"])]
        )

    async def _handle(self, request: Request) -> Response:
        seen = Received(
            path=request.url.path,
            body=await request.body(),
            headers=dict(request.headers),
            at=time.monotonic(),
        )
        self.requests.append(seen)
        index = len(self.requests)
        if index <= self.hold:
            await self._held()
        await asyncio.sleep(self.delay_s)
        status = (
            self.statuses[index - 1] if index <= len(self.statuses) else self.status
        )
        headers = {"Location": "/elsewhere"} if 300 <= status < 400 else None
        return Response(b"ok", status_code=status, headers=headers)

    async def _held(self) -> None:
        await asyncio.to_thread(self.release.wait, HOLD_LIMIT_S)


def make_settings(**overrides: Any) -> Settings:
    """Settings for a fast test against loopback receivers."""
    values: dict[str, Any] = {
        "webhook_secret": None,
        "webhook_allow_private": True,
        "webhook_backoff_ms": 10,
        "webhook_max_attempts": 3,
        "webhook_timeout_ms": 2_000,
        "lease_ms": 5_000,
        **overrides,
    }
    return Settings(**values)


async def enqueue(
    sessions: SessionFactory,
    url: str,
    payload: dict[str, Any] | None = None,
    *,
    kind: str = "recovered",
) -> str:
    """Enqueue one delivery in a committed transaction; its id."""
    async with transaction(sessions) as session:
        row = await enqueue_webhook(
            session, kind, url, payload or PAYLOAD, run_id="run-1", recovery_id=None
        )
        return row.id


async def load(sessions: SessionFactory, delivery_id: str) -> WebhookDelivery:
    """The delivery as it is stored now."""
    async with sessions() as session:
        row = await session.get(WebhookDelivery, delivery_id)
        assert row is not None
        return row


async def all_deliveries(sessions: SessionFactory) -> list[WebhookDelivery]:
    """Every stored delivery."""
    async with sessions() as session:
        return await _all(session, select(WebhookDelivery))


async def events(sessions: SessionFactory) -> list[Event]:
    """Every stored event, oldest first."""
    async with sessions() as session:
        return await _all(session, select(Event).order_by(col(Event.id)))


async def wait_until(
    check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0
) -> None:
    """Wait until `check` holds, failing the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def _all(session: AsyncSession, query: Select[Any]) -> list[Any]:
    # Through the sync session, whose `scalars` works the same for the
    # SQLAlchemy and the SQLModel session classes.
    return await session.run_sync(lambda sync: list(sync.scalars(query)))
