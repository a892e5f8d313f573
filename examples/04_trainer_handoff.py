"""A trainer that restarts its own run when the service asks it to.

Tinker binds a training client to the session that created it, so a run the
service restarts is not one the trainer can go on driving. Under a policy with
`restart_mode: "trainer"` the service only picks and checks the checkpoint,
then asks: it emits `restart_requested` (checkpoint, restore_optimizer,
deadline) and waits. This trainer follows `GET /events/stream` filtered to its
run and to `restart_requested` and the outcomes, restarts with the official
SDK (`create_training_client_from_state_with_optimizer`, or
`create_training_client_from_state` when the optimizer is not to be
restored), reports the new run to
`POST /recoveries/{recovery_id}/attempts/{attempt}/report`, and waits for the
service to check the new run and complete the recovery.

Offline, without TINKER_API_KEY: the bundled fake Tinker and the service are
started on loopback ports (SQLite in a temporary folder), a run is seeded with
two checkpoints, and the fake marks it corrupted.

    python examples/04_trainer_handoff.py [--timeout SECONDS]

With TINKER_API_KEY (and optionally TINKER_BASE_URL, TINKER_BASE_MODEL), the
trainer first creates a LoRA run on Tinker and saves its state; Tinker cannot
be asked to corrupt a run, so the recovery is then started by hand
(`POST /runs/{run_id}/recover`). This uses a little Tinker compute.

Exit code 0 when the recovery completed on the trainer's new run, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import tinker

from app.config import DEFAULT_TINKER_BASE_URL
from app.demo import (
    DEMO_KEY,
    DemoFailed,
    EventFeed,
    create_policy,
    describe,
    local_service,
    recovered_run,
    say,
    serve,
    watch,
)
from app.tinker.fake import create_fake_tinker_app
from app.tinker.fake_control import FakeTinkerControl

FOLLOWED = ["restart_requested", "completed", "failed", "exhausted"]
SDK_WAIT_S = 600.0


class Trainer:
    """Restarts the run with its own SDK session and reports the outcome."""

    def __init__(self, sdk: tinker.ServiceClient, api: httpx.Client) -> None:
        self.sdk = sdk
        self.api = api
        self.client: tinker.TrainingClient | None = None

    def restart(self, request: dict[str, Any]) -> None:
        """Do what a `restart_requested` event asks, then report to the service."""
        data = request["data"]
        path, optimizer = data["checkpoint"], data["restore_optimizer"]
        say(f"trainer: restarting from {path} (optimizer: {optimizer})")
        try:
            if optimizer:
                future = self.sdk.create_training_client_from_state_with_optimizer(path)
            else:
                future = self.sdk.create_training_client_from_state(path)
            self.client = future.result(timeout=SDK_WAIT_S)
        except tinker.TinkerError as error:
            say(f"trainer: the restart failed: {error}")
            self.report(request, {"error": f"restart failed: {error}"})
            return
        say(f"trainer: now driving {self.client.model_id}")
        self.report(request, {"new_run_id": self.client.model_id})

    def report(self, request: dict[str, Any], body: dict[str, str]) -> None:
        url = (
            f"/recoveries/{request['recovery_id']}/attempts/{request['attempt']}/report"
        )
        response = self.api.post(url, json=body)
        if response.status_code != 202:
            raise DemoFailed(f"the report was refused: {response.text}")
        say(f"trainer: reported attempt {request['attempt']}: {body}")


def handoff(trainer: Trainer, feed: EventFeed, deadline: float) -> dict[str, Any]:
    """Answer restart requests until the recovery completes; the completed event."""
    while (left := deadline - time.monotonic()) > 0:
        event = feed.next(left)
        if event is None:
            break
        say(describe(event))
        if event["type"] == "restart_requested":
            trainer.restart(event)
        elif event["type"] == "completed":
            return event
        elif event["type"] == "exhausted":
            raise DemoFailed("the recovery gave up")
    raise DemoFailed("no completed event before the deadline")


def recover(
    service_url: str,
    sdk: tinker.ServiceClient,
    run_id: str,
    trigger: Callable[[httpx.Client], None],
    timeout_s: float,
    policy: dict[str, Any],
) -> None:
    """Watch `run_id` in trainer mode, trigger a recovery and hand it off."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=service_url, timeout=30.0) as api:
        policy_id = create_policy(api, "example-04", restart_mode="trainer", **policy)
        trainer = Trainer(sdk, api)
        filters = {"run_id": run_id, "type": FOLLOWED}
        with EventFeed(service_url, **filters) as feed:
            watch(api, run_id, policy_id, deadline)
            trigger(api)
            completed = handoff(trainer, feed, deadline)

        new_run_id = completed["data"]["new_run_id"]
        if trainer.client is None or trainer.client.model_id != new_run_id:
            raise DemoFailed(f"{new_run_id} is not the run the trainer created")
        new = recovered_run(api, run_id, new_run_id)
        say(f"recovered: {run_id} -> {new_run_id}, watched as {new['status']}")
        info = trainer.client.get_info()
        say(f"the trainer's own client drives {info.model_id} ({info.model_name})")


def offline(stack: ExitStack, folder: Path, timeout_s: float) -> None:
    """The fake Tinker, a seeded run, and a corruption to recover from."""
    fake_url = stack.enter_context(serve(create_fake_tinker_app(DEMO_KEY))).url
    service = stack.enter_context(local_service(fake_url, DEMO_KEY, folder))
    say(f"fake Tinker on {fake_url}, the service on {service.url}")
    fake = stack.enter_context(FakeTinkerControl(fake_url))
    run_id = fake.seed_run(checkpoints=["step-100", "step-200"]).training_run_id
    say(f"seeded run {run_id} with checkpoints step-100, step-200")
    sdk = tinker.ServiceClient(base_url=fake_url, api_key=DEMO_KEY)
    stack.callback(lambda: sdk.close("success").result(timeout=60))

    def corrupt(_api: httpx.Client) -> None:
        say(f"Tinker marks {run_id} corrupted")
        fake.corrupt(run_id)

    recover(service.url, sdk, run_id, corrupt, timeout_s, {})


def live(stack: ExitStack, folder: Path, timeout_s: float) -> None:
    """A LoRA run on Tinker, whose recovery is started by hand."""
    key = os.environ["TINKER_API_KEY"]
    base_url = os.environ.get("TINKER_BASE_URL", DEFAULT_TINKER_BASE_URL)
    sdk = tinker.ServiceClient(base_url=base_url, api_key=key)
    stack.callback(lambda: sdk.close("success").result(timeout=60))
    model = os.environ.get("TINKER_BASE_MODEL", "Qwen/Qwen3-8B")
    say(f"creating a LoRA training run on {model} (this takes a moment)")
    first = sdk.create_lora_training_client(base_model=model, rank=8).result()
    state = first.save_state("trainer-handoff-state").result()
    say(f"run {first.model_id}: saved {state.path}")
    service = stack.enter_context(local_service(base_url, key, folder))

    def recover_by_hand(api: httpx.Client) -> None:
        say(f"asking the service to recover {first.model_id}")
        response = api.post(f"/runs/{first.model_id}/recover")
        if response.status_code != 202:
            raise DemoFailed(f"the recovery was refused: {response.text}")

    policy = {"poll_interval_ms": 5_000, "attempt_timeout_ms": 900_000}
    recover(service.url, sdk, first.model_id, recover_by_hand, timeout_s, policy)


def main() -> int:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--timeout", type=float, help="seconds to allow in all")
    args = options.parse_args()
    on_tinker = bool(os.environ.get("TINKER_API_KEY"))
    timeout_s = args.timeout if args.timeout is not None else 60.0
    if on_tinker and args.timeout is None:
        timeout_s = 1_200.0
    try:
        with ExitStack() as stack:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            (live if on_tinker else offline)(stack, folder, timeout_s)
    except (DemoFailed, httpx.HTTPError, tinker.TinkerError) as error:
        say(f"example failed: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
