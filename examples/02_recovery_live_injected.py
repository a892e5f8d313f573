"""Recover a real Tinker run, with the corruption injected by a local proxy.

Tinker cannot be asked to corrupt a run, so this example puts a small proxy
on loopback between the recovery service and Tinker. The proxy forwards
every request unchanged, except one answer to `GET
/api/v1/training_runs/{id}`, in which it sets `corrupted: true`; nothing
changes on Tinker. The service, pointed at the proxy, sees the corruption
and restores the run from its checkpoint on Tinker itself.

The steps: create a LoRA training run with the official SDK and save a
training checkpoint (`save_state`) and a sampler one
(`save_weights_for_sampler`, which is not resumable and must be passed
over); start the proxy and the service (SQLite in a temporary folder);
watch the run; let the proxy corrupt one poll; print the events of
`GET /events/stream` until `completed`; read the new run back with the SDK.

    TINKER_API_KEY=tml-... python examples/02_recovery_live_injected.py

Optional: TINKER_BASE_URL, TINKER_BASE_MODEL (default Qwen/Qwen3-8B),
`--timeout SECONDS` (default 1200). This uses a little Tinker compute: one
training run, two saved checkpoints, and the run the service creates.

Without TINKER_API_KEY it says so and exits 0. With `--fake` it runs the
same flow against the bundled fake Tinker instead, offline: the fake does
not train, so the run and its checkpoints are seeded through its control
endpoints, and the SDK reads runs from the fake.

Exit codes: 0 recovered (or no key and no `--fake`), 1 failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import tinker
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.config import DEFAULT_TINKER_BASE_URL
from app.demo import (
    DEMO_KEY,
    DemoFailed,
    EventFeed,
    create_policy,
    follow_recovery,
    local_service,
    recovered_run,
    say,
    serve,
    watch,
)
from app.tinker.fake import create_fake_tinker_app
from app.tinker.fake_control import FakeTinkerControl
from app.tinker.fake_state import SeedCheckpoint

RUNS_PATH = "/api/v1/training_runs/"
# Headers that describe one hop, or a body that httpx has already decoded.
HOP_HEADERS = {
    "host",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "content-encoding",
    "accept-encoding",
}
LIVE_POLICY = {
    "poll_interval_ms": 2_000,
    "max_attempts": 2,
    "attempt_timeout_ms": 900_000,
}


@dataclass
class Prepared:
    """A training run with a resumable checkpoint, ready to be watched."""

    run_id: str
    checkpoint: str


class CorruptingProxy:
    """Forwards everything to Tinker; one armed read of a run says `corrupted`."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self._armed: set[str] = set()
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[Route("/{path:path}", self.forward, methods=["GET", "POST"])],
            lifespan=self._lifespan,
        )

    def corrupt_next_read(self, run_id: str) -> None:
        """Make the next successful read of `run_id` answer `corrupted: true`."""
        with self._lock:
            self._armed.add(run_id)

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        # Futures on Tinker may be held open for a while: allow for it.
        async with httpx.AsyncClient(timeout=300.0) as client:
            self._client = client
            yield

    async def forward(self, request: Request) -> Response:
        url = self.upstream + request.scope["raw_path"].decode("ascii")
        if request.url.query:
            url += "?" + request.url.query
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS
        }
        answer = await self._client.request(
            request.method, url, headers=headers, content=await request.body()
        )
        body = answer.content
        if request.method == "GET" and answer.status_code == 200:
            body = self._maybe_corrupt(request.url.path, body)
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_HEADERS}
        return Response(body, status_code=answer.status_code, headers=kept)

    def _maybe_corrupt(self, path: str, body: bytes) -> bytes:
        run_id = path.removeprefix(RUNS_PATH) if path.startswith(RUNS_PATH) else ""
        with self._lock:
            if run_id not in self._armed:
                return body
            self._armed.discard(run_id)
        say(f"proxy: answering one read of {run_id} with corrupted: true")
        return json.dumps({**json.loads(body), "corrupted": True}).encode()


def prepare_on_tinker(sdk: tinker.ServiceClient, base_model: str) -> Prepared:
    """Create a LoRA training run and save its checkpoints with the SDK."""
    say(f"creating a LoRA training run on {base_model} (this takes a moment)")
    trainer = sdk.create_lora_training_client(base_model=base_model, rank=8).result()
    state = trainer.save_state("recovery-example-state").result()
    sampler = trainer.save_weights_for_sampler("recovery-example-sampler").result()
    say(f"run {trainer.model_id}: saved {state.path} and {sampler.path}")
    return Prepared(trainer.model_id, state.path)


def prepare_on_fake(fake_url: str) -> Prepared:
    """Seed a run with a training and a newer sampler checkpoint on the fake."""
    with FakeTinkerControl(fake_url) as fake:
        run = fake.seed_run(
            checkpoints=[
                SeedCheckpoint(name="recovery-example-state"),
                SeedCheckpoint(name="recovery-example-sampler", kind="sampler"),
            ]
        )
    assert run.last_checkpoint is not None
    path = run.last_checkpoint.tinker_path
    say(f"seeded run {run.training_run_id} on the fake with {path}")
    return Prepared(run.training_run_id, path)


def recover_through(
    proxy: CorruptingProxy,
    service_url: str,
    prepared: Prepared,
    timeout_s: float,
    policy: dict[str, int],
) -> str:
    """Watch the run, corrupt one poll, follow the recovery; the new run id."""
    deadline = time.monotonic() + timeout_s
    run_id = prepared.run_id
    with httpx.Client(base_url=service_url, timeout=30.0) as api:
        policy_id = create_policy(api, "example-02", **policy)
        with EventFeed(service_url, run_id=run_id) as feed:
            watch(api, run_id, policy_id, deadline)
            proxy.corrupt_next_read(run_id)
            completed = follow_recovery(feed, deadline)
        data = completed["data"]
        if data["checkpoint"] != prepared.checkpoint:
            raise DemoFailed(f"restored from {data['checkpoint']}, not the checkpoint")
        recovered_run(api, run_id, data["new_run_id"])
        new_run_id: str = data["new_run_id"]
        return new_run_id


def show_on_tinker(
    rest: tinker.RestClient, prepared: Prepared, new_run_id: str
) -> None:
    """Read both runs back with the SDK: the new one answers, the old is intact."""
    new = rest.get_training_run(new_run_id).result(timeout=60)
    old = rest.get_training_run(prepared.run_id).result(timeout=60)
    say(f"Tinker: {new.training_run_id} on {new.base_model}, corrupted={new.corrupted}")
    say(f"Tinker: {old.training_run_id} untouched, corrupted={old.corrupted}")
    if new.corrupted or old.corrupted:
        raise DemoFailed("Tinker reports a corrupted run after the recovery")


def prepare(live: bool, stack: ExitStack) -> tuple[str, str, Prepared]:
    """Where Tinker answers, the key for it, and a run there to recover."""
    if not live:
        fake = stack.enter_context(serve(create_fake_tinker_app(DEMO_KEY)))
        return fake.url, DEMO_KEY, prepare_on_fake(fake.url)
    key = os.environ["TINKER_API_KEY"]
    upstream = os.environ.get("TINKER_BASE_URL", DEFAULT_TINKER_BASE_URL)
    sdk = tinker.ServiceClient(base_url=upstream, api_key=key)
    stack.callback(lambda: sdk.close("success").result(timeout=60))
    model = os.environ.get("TINKER_BASE_MODEL", "Qwen/Qwen3-8B")
    return upstream, key, prepare_on_tinker(sdk, model)


def run(live: bool, timeout_s: float) -> int:
    """Prepare a run, recover it through the proxy; the exit code."""
    with ExitStack() as stack:
        upstream, key, prepared = prepare(live, stack)
        rest = tinker.RestClient(base_url=upstream, api_key=key)
        before = rest.get_training_run(prepared.run_id).result(timeout=60)
        say(f"the SDK reads {before.training_run_id}: corrupted={before.corrupted}")

        proxy = CorruptingProxy(upstream)
        proxy_url = stack.enter_context(serve(proxy.app)).url
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        service = stack.enter_context(local_service(proxy_url, key, folder))
        say(f"proxy on {proxy_url} -> {upstream}; the service on {service.url}")

        policy = LIVE_POLICY if live else {}
        new_run_id = recover_through(proxy, service.url, prepared, timeout_s, policy)
        show_on_tinker(rest, prepared, new_run_id)
    return 0


def main() -> int:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument(
        "--fake", action="store_true", help="use the bundled fake Tinker, offline"
    )
    options.add_argument("--timeout", type=float, help="seconds to allow in all")
    args = options.parse_args()
    live = not args.fake
    if live and not os.environ.get("TINKER_API_KEY"):
        say("TINKER_API_KEY is not set: nothing to do (try --fake to run offline)")
        return 0
    timeout_s = args.timeout or (1_200.0 if live else 60.0)
    try:
        return run(live, timeout_s)
    except (DemoFailed, httpx.HTTPError, tinker.TinkerError) as error:
        say(f"example failed: {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
