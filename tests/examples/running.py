"""Run the examples and the command as the user would: subprocesses from the root."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
BIN = Path(sys.executable).parent
RECOVERY_STEPS = [
    "detected",
    "started",
    "checkpoint_selected",
    "client_created",
    "completed",
]
EVENT_LINE = re.compile(r"^\s+#\d+\s+(\w+)")


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the service's or Tinker's settings, plus `extra`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("RECOVERY_", "TINKER_"))
    }
    return {**env, **extra}


def run(
    *command: str | Path, timeout_s: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command from the repository root and capture its output."""
    return subprocess.run(
        [str(part) for part in command],
        cwd=ROOT,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def printed_steps(output: str) -> list[str]:
    """The event types the demo printed, in order."""
    return [m.group(1) for line in output.splitlines() if (m := EVENT_LINE.match(line))]


def recovery_steps(output: str) -> list[str]:
    """The printed event types that belong to the recovery itself."""
    return [step for step in printed_steps(output) if step in RECOVERY_STEPS]


class Lines:
    """What a running process writes to stdout, collected line by line."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._process = process
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self.lines.append(line.rstrip("\n"))

    def finish(self, timeout_s: float = 5.0) -> list[str]:
        """Every line, once the process has closed its stdout."""
        self._thread.join(timeout_s)
        return list(self.lines)
