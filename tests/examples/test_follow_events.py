"""The event followers of example 03 against a running service that restarts.

Each follower starts from the beginning of a run's events, loses its
connection when the service stops, and must pick up after the last event it
printed once the service is back: the events of the recovery that happened
meanwhile arrive once each, in order.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.main import create_app
from app.tinker.fake_control import FakeTinkerControl
from tests.conftest import service_settings
from tests.examples.running import EXAMPLES, ROOT, Lines, clean_env
from tests.support.flow import events_of, fast_policy, wait_for
from tests.support.servers import ThreadedServer

RUN_EVENTS = ["monitoring_started", "detected", "started", "checkpoint_selected"]
RUN_EVENTS += ["client_created", "completed"]


def start_follower(kind: str, url: str, run_id: str) -> subprocess.Popen[str]:
    """The example follower of `kind`, from the first event of `run_id` on."""
    count = str(len(RUN_EVENTS))
    if kind == "python":
        command = [sys.executable, str(EXAMPLES / "03_follow_events.py")]
        command += ["--url", url, "--run-id", run_id, "--last-event-id", "0"]
        command += ["--count", count]
        env = clean_env()
    else:
        bash, curl = shutil.which("bash"), shutil.which("curl")
        assert bash and curl, "the curl follower needs bash and curl"
        command = [bash, str(EXAMPLES / "03_follow_events.sh")]
        env = clean_env(
            RECOVERY_URL=url,
            RUN_ID=run_id,
            LAST_EVENT_ID="0",
            MAX_EVENTS=count,
            RETRY_SECONDS="1",
        )
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def received(kind: str, lines: list[str]) -> list[tuple[int, str]]:
    """(id, type) of each event a follower printed."""
    if kind == "python":
        events = [json.loads(line) for line in lines]
        return [(event["id"], event["type"]) for event in events]
    ids = [int(line.removeprefix("id:")) for line in lines if line.startswith("id:")]
    types = [
        line.removeprefix("event:").strip()
        for line in lines
        if line.startswith("event:")
    ]
    return list(zip(ids, types, strict=True))


@pytest.fixture
def fake(fake_tinker: ThreadedServer) -> Iterator[FakeTinkerControl]:
    with FakeTinkerControl(fake_tinker.url) as control:
        yield control


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["python", "curl"])
def test_a_follower_resumes_after_the_service_restarts(
    kind: str, database_url: str, fake_tinker: ThreadedServer, fake: FakeTinkerControl
) -> None:
    settings = service_settings(database_url, fake_tinker.url)
    run_id = fake.seed_run(checkpoints=["step-1", "step-2"]).training_run_id
    first = ThreadedServer(create_app(settings))
    first.start()
    try:
        with httpx.Client(base_url=first.url, timeout=10) as api:
            body = {"policy_id": fast_policy(api)}
            assert api.post(f"/runs/{run_id}/monitor", json=body).status_code == 201
        follower = start_follower(kind, first.url, run_id)
        output = Lines(follower)
        wait_for(lambda: received(kind, output.lines), timeout=30)
    finally:
        first.stop()

    fake.corrupt(run_id)
    second = ThreadedServer(create_app(settings), port=first.port)
    second.start()
    try:
        follower.wait(timeout=60)
        with httpx.Client(base_url=second.url, timeout=10) as api:
            stored = events_of(api, run_id)
    finally:
        follower.kill()
        second.stop()

    got = received(kind, output.finish())
    assert follower.returncode == 0, follower.stderr.read() if follower.stderr else ""
    assert [type_ for _, type_ in got] == RUN_EVENTS
    assert got == [(e["id"], e["type"]) for e in stored[: len(RUN_EVENTS)]]
    assert follower.stderr is not None
    assert f"resuming after event {got[0][0]}" in follower.stderr.read()


def test_the_python_follower_stops_on_a_refusal(make_service: Any) -> None:
    service: ThreadedServer = make_service(api_tokens="right-token")

    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "03_follow_events.py"), "--url", service.url],
        cwd=ROOT,
        env=clean_env(RECOVERY_TOKEN="wrong-token"),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 1
    assert "refused: 401" in done.stderr
