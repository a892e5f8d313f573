"""The offline demo: one recovery against the bundled fake Tinker, followed live.

`tinker-recovery demo` and `examples/01_recovery_simulated.py` run `run_demo`.
It starts the fake Tinker and the service as real uvicorn servers on free
loopback ports, the service on a SQLite file in a temporary folder, seeds a
run with two checkpoints, watches it under a fast policy, marks it corrupted
through the fake's control endpoints, and prints every event of the run from
`GET /events/stream` until the recovery completes or gives up.

The parts (`LocalServer`, `local_service`, `EventFeed`, `follow_recovery`,
`watch`) are reused by the other examples.
"""

from __future__ import annotations

import json
import queue
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from httpx_sse import connect_sse

from app.config import Settings
from app.main import create_app
from app.tinker.fake import create_fake_tinker_app
from app.tinker.fake_control import FakeTinkerControl

DEMO_KEY = "tml-offline-demo-key-not-a-secret"
TIMEOUT_S = 60.0
RECOVERY_STEPS = (
    "detected",
    "started",
    "checkpoint_selected",
    "client_created",
    "completed",
)
FAST_POLICY: dict[str, Any] = {
    "enabled": True,
    "checkpoint_strategy": "latest",
    "poll_interval_ms": 200,
    "max_attempts": 3,
    "backoff_ms": 200,
    "max_backoff_ms": 1_000,
    "attempt_timeout_ms": 20_000,
}

Print = Callable[[str], None]


def say(line: str) -> None:
    """Print a line at once, even into a pipe."""
    print(line, flush=True)


class DemoFailed(RuntimeError):
    """The flow did not reach the outcome it was waiting for."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LocalServer:
    """An ASGI app served by uvicorn on a free loopback port, in a thread."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.port = port or free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=3,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> None:
        """Start serving; return once the server accepts connections."""
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive():
                raise DemoFailed(f"the server on port {self.port} failed to start")
            if time.monotonic() > deadline:
                raise DemoFailed(f"the server on port {self.port} did not start")
            time.sleep(0.02)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the server to finish and wait for its thread."""
        self.server.should_exit = True
        self.thread.join(timeout_s)


@contextmanager
def serve(app: Any) -> Iterator[LocalServer]:
    """Serve `app` on loopback for the duration of the block."""
    server = LocalServer(app)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def local_service(
    tinker_url: str, tinker_api_key: str, folder: Path
) -> Iterator[LocalServer]:
    """The recovery service on loopback, its SQLite database in `folder`."""
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{folder / 'recovery.db'}",
        host="127.0.0.1",
        api_tokens=[],
        tinker_base_url=tinker_url,
        tinker_api_key=tinker_api_key,
        monitor_idle_ms=200,
        heartbeat_interval_ms=1_000,
        shutdown_grace_ms=2_000,
        sse_keepalive_ms=1_000,
    )
    with serve(create_app(settings)) as server:
        yield server


class EventFeed:
    """Events from `GET /events/stream`, from the first stored one, in order.

    A thread reads the stream so that the caller can wait with a deadline:
    the stream only goes quiet between events, it never ends by itself.
    """

    def __init__(self, service_url: str, **filters: Any) -> None:
        self._http = httpx.Client(
            base_url=service_url, timeout=httpx.Timeout(10.0, read=60.0)
        )
        self._params = {"after": 0, **filters}
        self._items: queue.Queue[dict[str, Any] | BaseException] = queue.Queue()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)

    def __enter__(self) -> EventFeed:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._closed.set()
        self._http.close()
        self._thread.join(5.0)

    def next(self, timeout_s: float) -> dict[str, Any] | None:
        """The next event, or None when none came within `timeout_s`."""
        try:
            item = self._items.get(timeout=max(timeout_s, 0.0))
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            raise DemoFailed(f"the event stream broke: {item!r}") from item
        return item

    def _read(self) -> None:
        try:
            with connect_sse(
                self._http, "GET", "/events/stream", params=self._params
            ) as source:
                source.response.raise_for_status()
                for message in source.iter_sse():
                    if message.event and message.data:
                        self._items.put(json.loads(message.data))
            ended: BaseException = DemoFailed("the service ended the stream")
        except Exception as error:
            ended = error
        # Closing the feed breaks the read on purpose: not worth a report.
        if not self._closed.is_set():
            self._items.put(ended)


def describe(event: dict[str, Any]) -> str:
    """One printed line for an event."""
    attempt = f" attempt {event['attempt']}" if event.get("attempt") else ""
    data = json.dumps(event["data"], sort_keys=True) if event["data"] else ""
    return f"  #{event['id']:<4} {event['type']:<20}{attempt} {data}".rstrip()


def follow_recovery(
    feed: EventFeed, deadline: float, out: Print = say
) -> dict[str, Any]:
    """Print events until `completed`; the completed event, or DemoFailed."""
    while (left := deadline - time.monotonic()) > 0:
        event = feed.next(left)
        if event is None:
            break
        out(describe(event))
        if event["type"] == "completed":
            return event
        if event["type"] == "exhausted":
            raise DemoFailed("the recovery gave up: " + json.dumps(event["data"]))
    raise DemoFailed("no completed event before the deadline")


def create_policy(api: httpx.Client, name: str, **fields: Any) -> str:
    """Create an enabled policy; its id."""
    response = api.post("/policies", json={"name": name, **FAST_POLICY, **fields})
    _expect(response, 201)
    policy_id: str = response.json()["id"]
    return policy_id


def watch(api: httpx.Client, run_id: str, policy_id: str, deadline: float) -> None:
    """Register `run_id` and wait until the service has polled it once."""
    body = {"policy_id": policy_id, "metadata": {"source": "tinker-recovery demo"}}
    _expect(api.post(f"/runs/{run_id}/monitor", json=body), 201)
    while time.monotonic() < deadline:
        if api.get(f"/runs/{run_id}").json()["last_polled_at"]:
            return
        time.sleep(0.1)
    raise DemoFailed(f"the service did not poll {run_id} in time")


def recovered_run(api: httpx.Client, run_id: str, new_run_id: str) -> dict[str, Any]:
    """The successor run as the service shows it, checked against its predecessor."""
    old = api.get(f"/runs/{run_id}").json()
    new_response = api.get(f"/runs/{new_run_id}")
    _expect(new_response, 200)
    new: dict[str, Any] = new_response.json()
    if old["successor_run_id"] != new_run_id or old["status"] != "recovered":
        raise DemoFailed(f"{run_id} is not marked recovered by {new_run_id}: {old}")
    if new["predecessor_run_id"] != run_id:
        raise DemoFailed(f"{new_run_id} does not point back to {run_id}: {new}")
    return new


def _expect(response: httpx.Response, status: int) -> None:
    if response.status_code != status:
        raise DemoFailed(
            f"{response.request.method} {response.request.url.path} answered "
            f"{response.status_code}: {response.text}"
        )


def recover_offline(
    tinker_url: str, service_url: str, timeout_s: float, out: Print
) -> None:
    """Seed, watch, corrupt and follow one run through its recovery."""
    deadline = time.monotonic() + timeout_s
    with (
        FakeTinkerControl(tinker_url) as fake,
        httpx.Client(base_url=service_url, timeout=10.0) as api,
    ):
        run = fake.seed_run(checkpoints=["step-100", "step-200"])
        run_id = run.training_run_id
        out(f"seeded run {run_id} with checkpoints step-100, step-200")

        policy_id = create_policy(api, "demo")
        with EventFeed(service_url, run_id=run_id) as feed:
            watch(api, run_id, policy_id, deadline)
            out(f"the service polled {run_id}; now Tinker marks it corrupted")
            fake.corrupt(run_id)
            completed = follow_recovery(feed, deadline, out)

        new_run_id = completed["data"]["new_run_id"]
        new = recovered_run(api, run_id, new_run_id)
        state = fake.run_state(new_run_id)
        out(f"recovered: {run_id} -> {new_run_id}")
        out(f"  loaded from {state.loaded_from}, optimizer {state.optimizer_restored}")
        out(json.dumps(new, indent=2, sort_keys=True))


def run_demo(timeout_s: float = TIMEOUT_S, out: Print = say) -> int:
    """Run the offline demo; the exit code (0 when the run was recovered)."""
    try:
        with (
            tempfile.TemporaryDirectory(prefix="tinker-recovery-demo-") as folder,
            serve(create_fake_tinker_app(DEMO_KEY)) as tinker,
            local_service(tinker.url, DEMO_KEY, Path(folder)) as service,
        ):
            out(f"fake Tinker on {tinker.url}, the service on {service.url}")
            recover_offline(tinker.url, service.url, timeout_s, out)
    except (DemoFailed, httpx.HTTPError) as error:
        out(f"demo failed: {error}")
        return 1
    return 0
