"""The webhook outbox: deliveries stored with the outcome they report."""

from __future__ import annotations

import json
import uuid
from enum import StrEnum
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.storage.models import WebhookDelivery
from app.storage.types import utcnow


class DeliveryStatus(StrEnum):
    pending = "pending"
    delivered = "delivered"
    failed = "failed"


def encode_body(payload: dict[str, Any]) -> str:
    """The compact JSON text of `payload`, exactly as it will be sent."""
    return json.dumps(
        payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


async def enqueue_webhook(
    session: AsyncSession,
    kind: str,
    url: str,
    payload: dict[str, Any],
    *,
    run_id: str,
    recovery_id: str | None,
) -> WebhookDelivery:
    """Add a pending delivery to the caller's transaction; it is due at once."""
    # The body is serialised here, once: the stored text is what gets signed
    # and sent on every attempt, so a retry can never differ from the first.
    now = utcnow()
    delivery = WebhookDelivery(
        id=str(uuid.uuid4()),
        kind=kind,
        url=url,
        body=encode_body(payload),
        run_id=run_id,
        recovery_id=recovery_id,
        status=DeliveryStatus.pending,
        next_attempt_at=now,
        created_at=now,
    )
    session.add(delivery)
    await session.flush()
    return delivery
