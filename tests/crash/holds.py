"""Holding the answer of a Tinker call after the fake has acted on it.

The fake's own faults delay a call before its handler runs. A crash test also
needs the other moment: Tinker has done the work (the session or run exists)
but the service has not heard back yet. `AnswerHolds` wraps the fake app and
keeps the start of chosen answers back until the test releases them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

Match = Callable[[str, str], bool]
HOLD_LIMIT_S = 20.0


@dataclass
class Hold:
    """One answer to keep back: the first call that `match`es (method, path)."""

    match: Match
    reached: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)

    def wait_reached(self, timeout: float = 15.0) -> None:
        """Block until the fake has acted on the held call."""
        assert self.reached.wait(timeout), "no call matched the hold in time"


class AnswerHolds:
    """ASGI middleware: lets matching calls act, then holds their answers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.armed: list[Hold] = []
        self.all: list[Hold] = []
        self.lock = threading.Lock()

    def hold(self, match: Match) -> Hold:
        """Hold the answer of the next call that matches."""
        hold = Hold(match)
        with self.lock:
            self.armed.append(hold)
            self.all.append(hold)
        return hold

    def release_all(self) -> None:
        """Let every held answer go (to a client that may be dead by now)."""
        with self.lock:
            self.armed.clear()
            holds = list(self.all)
        for hold in holds:
            hold.released.set()

    def take(self, method: str, path: str) -> Hold | None:
        with self.lock:
            for hold in self.armed:
                if hold.match(method, path):
                    self.armed.remove(hold)
                    return hold
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hold = None
        if scope["type"] == "http" and scope["path"].startswith("/api/"):
            hold = self.take(scope["method"], scope["path"])
        if hold is None:
            await self.app(scope, receive, send)
            return

        async def held_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                hold.reached.set()
                await wait_released(hold)
            await send(message)

        await self.app(scope, receive, held_send)


async def wait_released(hold: Hold) -> None:
    # The release comes from the test's thread, so it is waited for in one.
    await asyncio.to_thread(hold.released.wait, HOLD_LIMIT_S)


def endpoint(name: str) -> Match:
    """Match POST calls to `/api/v1/<name>`."""
    return lambda method, path: method == "POST" and path == f"/api/v1/{name}"


def run_read(excluding: set[str]) -> Match:
    """Match reads of a training run other than those in `excluding`."""
    prefix = "/api/v1/training_runs/"

    def match(method: str, path: str) -> bool:
        if method != "GET" or not path.startswith(prefix):
            return False
        run_id = path.removeprefix(prefix)
        return "/" not in run_id and run_id not in excluding

    return match
