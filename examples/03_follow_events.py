"""Follow the service's events live, and resume after a disconnect without gaps.

A small Server-Sent Events client of `GET /events/stream` that needs only
httpx and httpx-sse. It prints each event as one JSON line, remembers the id
of the last one, and when the connection drops (the service restarts, a
proxy times out, the network blips) it reconnects with `Last-Event-ID`: the
service then sends every event it missed, in order, before the live ones.

Start a service to follow, for instance against the bundled fake Tinker:

    tinker-recovery fake-tinker --port 8001 &
    TINKER_BASE_URL=http://127.0.0.1:8001 TINKER_API_KEY=tml-local \\
        tinker-recovery serve &
    python examples/03_follow_events.py --url http://127.0.0.1:8000

Options: `--run-id RUN` and `--type TYPE` (repeatable) filter the events,
`--last-event-id N` starts after event N (`0` replays everything kept),
`--count N` stops after N events. `RECOVERY_URL` and `RECOVERY_TOKEN` (a
bearer token, when the service has `RECOVERY_API_TOKENS`) may come from the
environment. Exit codes: 0 done or interrupted, 1 refused by the service.

Without `--last-event-id`, the stream starts with new events only, so a
drop before the first event arrives has no id to resume from.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import httpx
from httpx_sse import connect_sse

# Three keep-alive periods of silence mean the connection is gone.
READ_TIMEOUT_S = 45.0


class Follower:
    """Reads the event stream, reconnecting after the last event it printed."""

    def __init__(self, url: str, token: str | None, filters: dict[str, Any]) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(
            base_url=url,
            headers=headers,
            timeout=httpx.Timeout(10.0, read=READ_TIMEOUT_S),
        )
        self.filters = filters
        self.last_id: str | None = None
        self.retry_s = 2.0
        self.printed = 0

    def follow(self, count: int | None) -> None:
        """Print events until `count` were printed, reconnecting as needed."""
        while count is None or self.printed < count:
            try:
                self._read(count)
            except httpx.TransportError as error:
                note(f"disconnected ({error.__class__.__name__})")
            else:
                if count is not None and self.printed >= count:
                    return
                note("the service closed the stream")
            note(f"resuming after event {self.last_id} in {self.retry_s:g} s")
            time.sleep(self.retry_s)

    def _read(self, count: int | None) -> None:
        headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
        with connect_sse(
            self.http, "GET", "/events/stream", params=self.filters, headers=headers
        ) as source:
            refuse_errors(source.response)
            for message in source.iter_sse():
                if message.retry is not None:
                    self.retry_s = message.retry / 1000
                if not message.data:
                    continue
                print(json.dumps(json.loads(message.data)), flush=True)
                self.last_id = message.id or self.last_id
                self.printed += 1
                if count is not None and self.printed >= count:
                    return


class Refused(Exception):
    """The service answered with an error that retrying will not fix."""


def refuse_errors(response: httpx.Response) -> None:
    """Raise Refused on a 4xx; a 5xx is a transport problem worth a retry."""
    if response.status_code < 400:
        return
    response.read()
    if response.status_code < 500:
        raise Refused(f"{response.status_code}: {response.text}")
    raise httpx.TransportError(f"the service answered {response.status_code}")


def note(text: str) -> None:
    """A status line, kept out of the event output."""
    print(f"# {text}", file=sys.stderr, flush=True)


def main() -> int:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument(
        "--url", default=os.environ.get("RECOVERY_URL", "http://127.0.0.1:8000")
    )
    options.add_argument("--token", default=os.environ.get("RECOVERY_TOKEN"))
    options.add_argument("--run-id", help="only the events of this run")
    options.add_argument("--type", action="append", help="only these event types")
    options.add_argument("--last-event-id", help="start after this event id")
    options.add_argument("--count", type=int, help="stop after this many events")
    args = options.parse_args()

    filters = {"run_id": args.run_id, "type": args.type}
    follower = Follower(args.url, args.token, {k: v for k, v in filters.items() if v})
    follower.last_id = args.last_event_id
    try:
        follower.follow(args.count)
    except Refused as error:
        note(f"refused: {error}")
        return 1
    except KeyboardInterrupt:
        note(f"stopped after event {follower.last_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
