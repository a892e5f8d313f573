"""The bodies clients see for events, one at a time or a page at a time."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class EventOut(BaseModel):
    """One event: the JSON body of an SSE message and an item of a page."""

    model_config = ConfigDict(from_attributes=True)

    id: int = Field(description="Grows with every event; resume after it")
    type: str = Field(examples=["detected", "completed"])
    run_id: str
    recovery_id: str | None
    attempt: int | None
    time: datetime = Field(description="When the event was written (ISO-8601, UTC)")
    data: dict[str, Any]


class EventPage(BaseModel):
    """Events oldest first, and where to continue from."""

    items: list[EventOut]
    next_after: int | None = Field(
        description=(
            "The `after` to ask with next: the last id of this page, or the "
            "`after` given when the page is empty"
        )
    )
