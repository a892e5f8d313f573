"""The outbox: a delivery commits, or not, with the transaction that adds it."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from app.storage.db import SessionFactory, transaction
from app.storage.types import utcnow
from app.webhooks.outbox import enqueue_webhook
from tests.webhooks.helpers import all_deliveries, load

PAYLOAD = {"type": "recovered", "run_id": "r:1", "metadata": {"team": "ü"}}


async def test_a_delivery_is_stored_pending_and_due(sessions: SessionFactory) -> None:
    async with transaction(sessions) as session:
        row = await enqueue_webhook(
            session,
            "recovered",
            "https://example.com/h",
            PAYLOAD,
            run_id="r:1",
            recovery_id="rec-1",
        )

    stored = await load(sessions, row.id)
    assert stored.status == "pending"
    assert stored.attempts == 0
    assert stored.kind == "recovered"
    assert (stored.run_id, stored.recovery_id) == ("r:1", "rec-1")
    assert stored.next_attempt_at <= utcnow() + timedelta(seconds=1)
    assert stored.claim_token is None
    assert json.loads(stored.body) == PAYLOAD
    assert stored.body == '{"type":"recovered","run_id":"r:1","metadata":{"team":"ü"}}'


async def test_a_rolled_back_transaction_leaves_no_delivery(
    sessions: SessionFactory,
) -> None:
    with pytest.raises(RuntimeError):
        async with transaction(sessions) as session:
            await enqueue_webhook(
                session,
                "recovered",
                "https://e.com/",
                PAYLOAD,
                run_id="r",
                recovery_id=None,
            )
            raise RuntimeError("the outcome was not committed")

    assert await all_deliveries(sessions) == []


async def test_a_body_that_is_not_json_is_refused_at_once(
    sessions: SessionFactory,
) -> None:
    with pytest.raises(ValueError):
        async with transaction(sessions) as session:
            await enqueue_webhook(
                session,
                "recovered",
                "https://e.com/",
                {"loss": float("nan")},
                run_id="r",
                recovery_id=None,
            )
