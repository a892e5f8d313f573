"""Run the service as a real OS process, to be killed and started again.

Most of a cold start is importing the service's modules. A test that restarts
the service dozens of times would spend minutes on that, so `ServiceProcess`
keeps standby processes that have done the imports and wait on their stdin;
a start tells the oldest to go on with `tinker-recovery serve`. A standby
holds no state: it reads the database only once it serves.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import httpx

from tests.support.servers import free_port

START_TIMEOUT_S = 60.0
EXIT_TIMEOUT_S = 10.0
STANDBY_SCRIPT = """
import sys
import app.cli
import app.main

if sys.stdin.readline().strip() == "serve":
    app.cli.main(["serve"])
"""


def serve_command() -> list[str]:
    """The `tinker-recovery serve` console script, or the module it runs."""
    script = Path(sys.executable).with_name("tinker-recovery")
    if script.exists():
        return [str(script), "serve"]
    return [sys.executable, "-m", "app.cli", "serve"]


class ServiceProcess:
    """`tinker-recovery serve` in a child process, on one port across restarts.

    The output of every process goes to `log_path`, so that a failing test
    can show what each incarnation of the service said.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        *,
        port: int | None = None,
        standbys: int = 2,
    ) -> None:
        self.port = port or free_port()
        self.env = {**os.environ, **env, "RECOVERY_PORT": str(self.port)}
        self.env.setdefault("RECOVERY_HOST", "127.0.0.1")
        self.log_path = log_path
        self.standbys = standbys
        self.process: subprocess.Popen[bytes] | None = None
        self.waiting: list[subprocess.Popen[bytes]] = []
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start serving (cold, or from the standby) and wait until ready."""
        assert not self.alive, "the service is already running"
        self.starts += 1
        self._mark(f"=== start {self.starts} at {datetime.now(UTC):%H:%M:%S.%f} ===")
        self.waiting = [p for p in self.waiting if p.poll() is None]
        if self.waiting:
            self.process = self.waiting.pop(0)
            assert self.process.stdin is not None
            self.process.stdin.write(b"serve\n")
            self.process.stdin.close()
        else:
            # A cold start: the standbys warm up meanwhile, for the restarts.
            self.process = self._spawn(serve_command(), stdin=subprocess.DEVNULL)
            self._top_up()
        self._wait_ready(timeout)
        self._top_up()

    def _top_up(self) -> None:
        while len(self.waiting) < self.standbys:
            standby = [sys.executable, "-c", STANDBY_SCRIPT]
            self.waiting.append(self._spawn(standby, stdin=subprocess.PIPE))

    def _spawn(self, command: list[str], stdin: int) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                command, env=self.env, stdin=stdin, stdout=log, stderr=log
            )

    def _mark(self, line: str) -> None:
        with self.log_path.open("ab") as log:
            log.write(f"\n{line}\n".encode())

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if not self.alive:
                    raise RuntimeError(f"the service exited early:\n{self.log_tail()}")
                try:
                    if client.get("/readyz").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.02)
        self.kill()
        raise TimeoutError(f"the service was not ready in time:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the serving process, as a crash would, and reap it."""
        if self.alive:
            self._mark(f"=== SIGKILL at {datetime.now(UTC):%H:%M:%S.%f} ===")
        _kill(self.process)

    def stop(self) -> None:
        """Ask the serving process to shut down; kill it if it does not in time."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(EXIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()

    def close(self) -> None:
        """Kill the serving process and the standbys, whatever state they are in."""
        for process in [self.process, *self.waiting]:
            _kill(process)
        self.waiting.clear()

    def log_tail(self, lines: int = 60) -> str:
        """The last lines the service wrote, for failure messages."""
        if not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def _kill(process: subprocess.Popen[bytes] | None) -> None:
    if process is None:
        return
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait(EXIT_TIMEOUT_S)
    if process.stdin is not None:
        process.stdin.close()
