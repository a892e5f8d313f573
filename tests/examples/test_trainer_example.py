"""Example 04, a trainer that restarts its own run, run as the user runs it."""

from __future__ import annotations

import re
import sys

from tests.examples.running import EXAMPLES, printed_steps, run

EXAMPLE = EXAMPLES / "04_trainer_handoff.py"


def test_the_trainer_restarts_its_run_and_the_service_completes_it() -> None:
    done = run(sys.executable, EXAMPLE)

    assert done.returncode == 0, done.stdout + done.stderr
    assert printed_steps(done.stdout) == ["restart_requested", "completed"]
    lines = done.stdout.splitlines()
    [driving] = [line for line in lines if line.startswith("trainer: now driving ")]
    new_run_id = driving.removeprefix("trainer: now driving ")
    order = [
        " restart_requested ",
        "trainer: restarting from tinker://",
        "trainer: now driving ",
        f"trainer: reported attempt 1: {{'new_run_id': '{new_run_id}'}}",
        " completed ",
        f"-> {new_run_id}, watched as monitoring",
        f"the trainer's own client drives {new_run_id} ",
    ]
    found = [next(i for i, line in enumerate(lines) if part in line) for part in order]
    assert found == sorted(found), done.stdout
    assert new_run_id in lines[found[4]]
    assert re.search(r"step-200 \(optimizer: True\)$", lines[found[1]])


def test_the_trainer_example_fails_when_time_runs_out() -> None:
    done = run(sys.executable, EXAMPLE, "--timeout", "0")

    assert done.returncode == 1
    assert "example failed" in done.stdout
    assert "trainer: " not in done.stdout
    assert "completed" not in printed_steps(done.stdout)
