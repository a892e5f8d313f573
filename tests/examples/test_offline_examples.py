"""The offline examples and `tinker-recovery demo`, run as the user runs them."""

from __future__ import annotations

import sys

from tests.examples.running import (
    BIN,
    EXAMPLES,
    RECOVERY_STEPS,
    clean_env,
    printed_steps,
    recovery_steps,
    run,
)


def test_the_demo_command_prints_the_recovery_in_order() -> None:
    done = run(BIN / "tinker-recovery", "demo")

    assert done.returncode == 0, done.stdout + done.stderr
    assert recovery_steps(done.stdout) == RECOVERY_STEPS
    assert "recovered: " in done.stdout


def test_the_simulated_example_recovers_a_run_end_to_end() -> None:
    done = run(sys.executable, EXAMPLES / "01_recovery_simulated.py")

    assert done.returncode == 0, done.stdout + done.stderr
    assert recovery_steps(done.stdout) == RECOVERY_STEPS
    assert printed_steps(done.stdout)[-1] == "completed"
    assert '"predecessor_run_id"' in done.stdout
    assert '"status": "monitoring"' in done.stdout


def test_the_simulated_example_fails_when_time_runs_out() -> None:
    done = run(sys.executable, EXAMPLES / "01_recovery_simulated.py", "--timeout", "0")

    assert done.returncode == 1
    assert "demo failed" in done.stdout
    assert "completed" not in printed_steps(done.stdout)


def test_the_injected_example_recovers_a_run_behind_the_proxy() -> None:
    done = run(sys.executable, EXAMPLES / "02_recovery_live_injected.py", "--fake")

    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    injected = next(i for i, line in enumerate(lines) if "corrupted: true" in line)
    detected = next(i for i, line in enumerate(lines) if " detected " in line)
    assert injected < detected
    assert recovery_steps(done.stdout) == RECOVERY_STEPS
    assert "recovery-example-state" in lines[detected]
    read_back = [line for line in lines[detected:] if line.startswith("Tinker:")]
    assert len(read_back) == 2
    assert all(line.endswith("corrupted=False") for line in read_back)
    assert "untouched" in read_back[1]


def test_the_injected_example_without_a_key_says_so_and_exits_0() -> None:
    done = run(
        sys.executable, EXAMPLES / "02_recovery_live_injected.py", env=clean_env()
    )

    assert done.returncode == 0
    assert "TINKER_API_KEY is not set" in done.stdout
    assert printed_steps(done.stdout) == []
