"""The event log: JSON pages of stored events, and a live Server-Sent Events stream."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.api.responses import errors
from app.config import Settings
from app.errors import ValidationFailed
from app.events.broker import PRUNED, EventBroker, Subscription
from app.events.queries import EventFilter, read_after
from app.events.schemas import EventOut, EventPage
from app.storage.db import SessionFactory
from app.storage.models import Event

# Ids are 64-bit integers in the database; anything larger cannot exist.
MAX_EVENT_ID = 2**63 - 1
MAX_ID_DIGITS = len(str(MAX_EVENT_ID))
MAX_TYPES = 32
MAX_TYPE_LENGTH = 32
BATCH_SIZE = 100

router = APIRouter(tags=["events"], responses=errors(ValidationFailed))


def get_broker(request: Request) -> EventBroker:
    """The process's event broker."""
    broker: EventBroker = request.app.state.runtime.broker
    return broker


def get_sessions(request: Request) -> SessionFactory:
    """The process's session factory."""
    sessions: SessionFactory = request.app.state.runtime.read_sessions
    return sessions


def get_settings(request: Request) -> Settings:
    """The process's settings."""
    settings: Settings = request.app.state.runtime.settings
    return settings


def _check_text(field: str, value: str) -> None:
    # Postgres refuses NUL characters in text: say so instead of failing.
    if "\x00" in value:
        raise ValidationFailed(field, "must not contain NUL characters", "query")


def get_filter(
    run_id: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=512,
            description="Only the events of this run (its Tinker training_run_id)",
        ),
    ] = None,
    type: Annotated[
        list[str] | None,
        Query(
            description="Only events of these types; repeat to give several",
            examples=[["completed", "exhausted"]],
        ),
    ] = None,
) -> EventFilter:
    """The run and type filters shared by the page and the stream."""
    if run_id is not None:
        _check_text("run_id", run_id)
    for name in type or ():
        _check_text("type", name)
        if not 1 <= len(name) <= MAX_TYPE_LENGTH:
            raise ValidationFailed(
                "type", f"an event type has 1 to {MAX_TYPE_LENGTH} characters", "query"
            )
    if type is not None and len(type) > MAX_TYPES:
        raise ValidationFailed(
            "type", f"at most {MAX_TYPES} types may be given", "query"
        )
    return EventFilter.of(run_id, type)


BrokerDep = Annotated[EventBroker, Depends(get_broker)]
SessionsDep = Annotated[SessionFactory, Depends(get_sessions)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
FilterDep = Annotated[EventFilter, Depends(get_filter)]


@router.get("/events")
async def list_events(
    sessions: SessionsDep,
    which: FilterDep,
    after: Annotated[
        int,
        Query(ge=0, le=MAX_EVENT_ID, description="Only events with a larger id"),
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> EventPage:
    """Page through stored events, oldest first; ask again with `next_after`."""
    async with sessions() as session:
        rows = await read_after(session, after, limit, which)
    items = [EventOut.model_validate(row) for row in rows]
    return EventPage(items=items, next_after=items[-1].id if items else after)


STREAM_EXAMPLE = (
    "retry: 2000\n\n"
    "id: 42\n"
    "event: detected\n"
    'data: {"id": 42, "type": "detected", "run_id": "...", ...}\n\n'
    ": keep-alive\n\n"
)

STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": (
            "An endless `text/event-stream`. It opens with a `retry:` hint. "
            "Each message has `id:` (the event id), `event:` (the event type) "
            "and `data:` (the event as in `GET /events`). Comment lines keep "
            "idle connections open. A client that stops reading is not waited "
            "for, and loses nothing: what it missed is read from the log for "
            "it when it reads again. The stream ends when the service shuts "
            "down; reconnect with `Last-Event-ID` to carry on. A message of "
            f"type `{PRUNED}` says that events after the requested id (other "
            "than 0) were deleted by retention before they could be sent; it "
            "passes every filter, and its id is safe to resume from."
        ),
        "content": {
            "text/event-stream": {
                "schema": {"type": "string"},
                "example": STREAM_EXAMPLE,
            }
        },
    }
}


@router.get(
    "/events/stream",
    # The class names no media type, so the schema shows only the stream's
    # own (below) for 200, and JSON for the errors.
    response_class=EventSourceResponse,
    responses=STREAM_DOC,
)
async def stream_events(
    broker: BrokerDep,
    settings: SettingsDep,
    which: FilterDep,
    after: Annotated[
        int | None,
        Query(
            ge=0,
            le=MAX_EVENT_ID,
            description=(
                "Send the stored events with a larger id first, then the live "
                "ones; without it (and without Last-Event-ID) only new events "
                "are sent. `after=0` replays everything still kept"
            ),
        ),
    ] = None,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            description="The id of the last event received; wins over `after`",
        ),
    ] = None,
) -> EventSourceResponse:
    """Follow events live, resuming after `Last-Event-ID` or `after`."""
    start = resume_point(last_event_id, after)
    subscription = broker.subscribe(start, which.run_id, which.types)
    return EventSourceResponse(
        _messages(subscription, settings.sse_retry_ms),
        ping=settings.sse_keepalive_ms / 1000,
        ping_message_factory=lambda: ServerSentEvent(comment="keep-alive"),
    )


def resume_point(last_event_id: str | None, after: int | None) -> int | None:
    """Where a stream starts: the header when given, else `after`."""
    if last_event_id is None or not last_event_id.strip():
        return after
    text = last_event_id.strip()
    digits = text.isascii() and text.isdigit()
    if not digits or len(text) > MAX_ID_DIGITS or int(text) > MAX_EVENT_ID:
        raise ValidationFailed(
            "Last-Event-ID",
            "must be the id of an event: a whole number >= 0",
            "header",
        )
    return int(text)


async def _messages(
    subscription: Subscription, retry_ms: int
) -> AsyncIterator[ServerSentEvent | bytes]:
    # Subscribe before the first byte goes out, so that a client which has
    # seen the opening message has every later event coming to it.
    async with subscription as events:
        yield ServerSentEvent(retry=retry_ms)
        async for event in events:
            # Events that are already waiting go out in one write: a burst
            # then costs each stream a few sends instead of one per event.
            batch = [event, *events.take_ready(BATCH_SIZE - 1)]
            yield b"".join(recent_messages.encoded(item) for item in batch)


def message(event: Event) -> ServerSentEvent:
    """The SSE message for one event."""
    body = EventOut.model_validate(event).model_dump_json()
    return ServerSentEvent(body, id=str(event.id), event=event.type)


class RecentMessages:
    """The encoded SSE messages of recent events, shared by every stream.

    Each subscriber of a live stream sends the same bytes for an event, and
    encoding them is most of the cost of a fan-out: doing it once per event
    instead of once per subscriber keeps many subscribers cheap. Entries are
    keyed by id and time, so a log that was emptied and refilled cannot get
    another event's bytes; the lock is for servers that run several loops.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[tuple[int, datetime], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def encoded(self, event: Event) -> bytes:
        """The message for `event`, encoded once while it is recent."""
        if event.type == PRUNED or event.id is None:
            return message(event).encode()
        key = (event.id, event.time)
        with self._lock:
            cached = self._items.get(key)
        if cached is not None:
            return cached
        encoded = message(event).encode()
        with self._lock:
            self._items[key] = encoded
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return encoded


recent_messages = RecentMessages(size=1024)
