"""An SSE client in a thread of its own, recording what it received."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import connect_sse

from tests.support.flow import wait_for

now = time.monotonic


@dataclass(frozen=True)
class Received:
    """One event as the stream delivered it, and when."""

    id: int
    type: str
    body: dict[str, Any]
    at: float


class StreamReader:
    """Follows `GET /events/stream` of one service from `after` on, in a thread."""

    def __init__(self, base_url: str, after: int = 0) -> None:
        self.base_url = base_url
        self.after = after
        self.received: list[Received] = []
        self.error: BaseException | None = None
        self.connected = threading.Event()
        self._stopping = threading.Event()
        timeout = httpx.Timeout(10, read=30)
        self._client = httpx.Client(base_url=base_url, timeout=timeout)
        self._thread = threading.Thread(target=self._read, daemon=True)

    def start(self) -> StreamReader:
        self._thread.start()
        if not self.connected.wait(10):
            raise AssertionError(f"no stream from {self.base_url}: {self.error!r}")
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._client.close()
        self._thread.join(10)

    def ids(self) -> list[int]:
        return [event.id for event in list(self.received)]

    def wait_for_ids(self, wanted: set[int], timeout: float = 15.0) -> None:
        """Return once every id in `wanted` has been received."""
        try:
            wait_for(lambda: wanted <= set(self.ids()), timeout=timeout, interval=0.02)
        except AssertionError:
            missing = sorted(wanted - set(self.ids()))
            raise AssertionError(
                f"the stream of {self.base_url} lacks {missing} ({self.error!r})"
            ) from None

    def _read(self) -> None:
        params = {"after": self.after}
        try:
            with connect_sse(
                self._client, "GET", "/events/stream", params=params
            ) as sse:
                sse.response.raise_for_status()
                self.connected.set()
                for message in sse.iter_sse():
                    if not message.data:
                        continue  # the `retry:` advice at the start
                    body = message.json()
                    event = Received(int(message.id), message.event, body, now())
                    self.received.append(event)
        except Exception as error:
            # Kept for the test to report; a stop closes the client on purpose.
            if not self._stopping.is_set():
                self.error = error
        finally:
            self.connected.set()
