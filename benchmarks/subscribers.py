"""A process holding many SSE subscriptions, timing each event's arrival.

    python -m benchmarks.subscribers URL COUNT OUT

Opens COUNT streams on URL/events/stream, prints `ready` once every stream
has answered, and records for each message its event id and how long after
the event's `time` it arrived. On a line `stop` on stdin (or at its end) it
writes `{"delays_s": [...], "ids": [...], "failed": n}` to OUT and exits.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.http import parse_time


class Streams:
    """COUNT event streams read at once, their arrivals recorded."""

    def __init__(self, url: str, count: int) -> None:
        self.url = url
        self.count = count
        # Arrival times and payloads, parsed only once the streams end, so
        # that timing one arrival does not delay the next.
        self.arrivals: list[tuple[float, bytes]] = []
        self.failed = 0
        self.opened = 0
        self.all_open = asyncio.Event()

    async def follow(self, http: aiohttp.ClientSession) -> None:
        try:
            async with http.get("/events/stream") as response:
                response.raise_for_status()
                self.opened_one()
                async for line in response.content:
                    if line.startswith(b"data:"):
                        self.arrived(line[5:])
        except (TimeoutError, aiohttp.ClientError):
            self.failed += 1
            self.opened_one()

    def opened_one(self) -> None:
        self.opened += 1
        if self.opened == self.count:
            self.all_open.set()

    def arrived(self, payload: bytes) -> None:
        self.arrivals.append((time.time(), payload))

    def found(self) -> dict[str, Any]:
        delays, ids = [], []
        for at, payload in self.arrivals:
            event = json.loads(payload)
            delays.append(at - parse_time(event["time"]))
            ids.append(int(event["id"]))
        return {"delays_s": delays, "ids": ids, "failed": self.failed}


async def wait_for_stop() -> None:
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line or line.strip() == "stop":
            return


async def main(url: str, count: int) -> dict[str, Any]:
    streams = Streams(url, count)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as http:
        tasks = [asyncio.create_task(streams.follow(http)) for _ in range(count)]
        await streams.all_open.wait()
        print("ready", flush=True)
        await wait_for_stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return streams.found()


if __name__ == "__main__":
    found = asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    Path(sys.argv[3]).write_text(json.dumps(found))
