"""What the fake Tinker server does on the wire besides answering: it records
every API call and plays the faults a test injected.

A fault is matched against a call's route name (`load_weights`,
`get_training_run`, ...) or, with a `*` or `/` in it, against its path as an
`fnmatch` pattern. It can delay the call, answer with any status and headers,
send a body that is not JSON, or drop the connection half-way through the
answer. With `after`, the real handler runs first and its effects stay: the
client just never hears about them, as when a network fails on the way back.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any

from fastapi import HTTPException, Request
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.tinker.paths import parse_tinker_path

_MALFORMED_BODY = b'{"detail": "this body stops in the midd'
_BODY_LOG_LIMIT = 16_384

# Keys this module adds to the ASGI scope of an API call.
_CALL = "fake_tinker.call"
_FAULTS = "fake_tinker.faults"
_FAULT = "fake_tinker.fault"


class FaultSpec(BaseModel):
    """A fault to play on the next `count` matching calls."""

    endpoint: str = Field(min_length=1)
    method: str | None = None
    status: int | None = Field(default=None, ge=100, le=599)
    delay_s: float = Field(default=0.0, ge=0)
    malformed_body: bool = False
    drop_connection: bool = False
    after: bool = False
    headers: dict[str, str] = {}
    detail: str = "injected fault"
    count: int | None = Field(default=1, ge=1, description="None: until cleared")

    def matches(self, method: str, path: str, route_name: str | None) -> bool:
        """Whether this fault applies to a call."""
        if self.method is not None and self.method.upper() != method:
            return False
        if "*" in self.endpoint or "/" in self.endpoint:
            return fnmatchcase(path, self.endpoint)
        return self.endpoint == route_name

    @property
    def breaks_answer(self) -> bool:
        """Whether the fault replaces the answer rather than only delaying it."""
        return self.status is not None or self.malformed_body or self.drop_connection


class FakeCall(BaseModel):
    """One API call the fake received; `status` is None for a dropped answer."""

    time: datetime
    method: str
    path: str
    endpoint: str | None
    run_id: str | None
    idempotency_key: str | None
    body: Any = None
    status: int | None = None
    fault: bool = False


class FaultsAndCalls:
    """ASGI middleware: records calls under /api/ and answers for faults.

    The route of a call is only known once the app has routed it, so the
    fault is chosen by the `play_faults` dependency; this middleware then puts
    the fault's answer in place of whatever the app sends.
    """

    def __init__(
        self, app: ASGIApp, faults: list[FaultSpec], calls: list[FakeCall]
    ) -> None:
        self.app = app
        self.faults = faults
        self.calls = calls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return

        body = await _read_body(receive)
        call = _record(scope, body)
        self.calls.append(call)
        scope[_CALL], scope[_FAULTS] = call, self.faults

        async def send_or_fault(message: Message) -> None:
            fault: FaultSpec | None = scope.get(_FAULT)
            if fault is None or not fault.breaks_answer:
                if message["type"] == "http.response.start":
                    call.status = message["status"]
                await send(message)
            elif message["type"] == "http.response.start":
                call.status = await _answer_for(fault, send)
            # Anything else the app sends is dropped: the fault answered.

        await self.app(scope, _replaying(body, receive), send_or_fault)


async def play_faults(request: Request) -> None:
    """Dependency of the API routes: note the route, and play a matching fault."""
    call: FakeCall = request.scope[_CALL]
    route = request.scope.get("route")
    call.endpoint = getattr(route, "name", None)
    call.run_id = request.path_params.get("run_id") or call.run_id

    fault = _take_fault(request.scope[_FAULTS], call)
    if fault is None:
        return
    call.fault = True
    request.scope[_FAULT] = fault
    if fault.delay_s:
        await asyncio.sleep(fault.delay_s)
    if fault.breaks_answer and not fault.after:
        # Skips the handler; the middleware answers in its place.
        raise HTTPException(500, fault.detail)


def _take_fault(faults: list[FaultSpec], call: FakeCall) -> FaultSpec | None:
    for fault in faults:
        if fault.matches(call.method, call.path, call.endpoint):
            if fault.count is not None:
                fault.count -= 1
                if fault.count == 0:
                    faults.remove(fault)
            return fault
    return None


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _record(scope: Scope, body: bytes) -> FakeCall:
    headers = dict(scope["headers"])
    key = headers.get(b"x-idempotency-key")
    parsed = _json_or_none(body)
    return FakeCall(
        time=datetime.now(UTC),
        method=scope["method"],
        path=scope["path"],
        endpoint=None,
        run_id=_run_id_in(parsed),
        idempotency_key=key.decode("latin-1") if key else None,
        body=parsed,
    )


def _json_or_none(body: bytes) -> Any:
    if not body or len(body) > _BODY_LOG_LIMIT:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def _run_id_in(body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    if isinstance(body.get("model_id"), str):
        return str(body["model_id"])
    try:
        return parse_tinker_path(
            str(body.get("path") or body.get("tinker_path"))
        ).run_id
    except ValueError:
        return None


async def _answer_for(fault: FaultSpec, send: Send) -> int | None:
    if fault.drop_connection:
        await _drop(send)
        return None
    return await _answer(fault, send)


async def _drop(send: Send) -> None:
    # The answer starts, then stops: uvicorn closes the connection when the
    # app returns with the body unfinished. The client sees a broken read.
    headers = [(b"content-type", b"application/json"), (b"content-length", b"4096")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b'{"de', "more_body": True})


async def _answer(fault: FaultSpec, send: Send) -> int:
    if fault.malformed_body:
        body = _MALFORMED_BODY
    else:
        body = json.dumps({"detail": fault.detail}).encode()
    extra = {name.lower(): value for name, value in fault.headers.items()}
    headers = {"content-type": "application/json", **extra}
    headers["content-length"] = str(len(body))
    status = fault.status or (200 if fault.malformed_body else 500)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        }
    )
    await send({"type": "http.response.body", "body": body})
    return status
