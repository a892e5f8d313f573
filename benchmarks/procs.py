"""Child processes: the fake Tinker and the service, with their CPU and memory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from app.demo import free_port

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# The fake accepts any `tml-` key when it was given none of its own.
API_KEY = "tml-benchmark"


def command(*args: str) -> list[str]:
    """The `tinker-recovery` console script with `args`."""
    script = Path(sys.executable).with_name("tinker-recovery")
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "app.cli", *args]


class Child:
    """One server process on a loopback port, its output in a log file."""

    def __init__(
        self,
        name: str,
        args: list[str],
        log_dir: Path,
        ready_path: str,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{name}.log"
        self.ready_path = ready_path
        argv = [arg.replace("{port}", str(self.port)) for arg in args]
        full_env = {**os.environ, **(env or {}), "RECOVERY_PORT": str(self.port)}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv, env=full_env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until the ready path answers 200, or fail with the log's tail."""
        deadline = time.monotonic() + timeout
        headers = {"X-Api-Key": API_KEY}
        with httpx.Client(base_url=self.url, timeout=2.0, headers=headers) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
                try:
                    if client.get(self.ready_path).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
        raise TimeoutError(f"{self.name} was not ready:\n{self.log_tail()}")

    def stop(self) -> None:
        """Ask the process to end; kill it if it does not in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines the process wrote."""
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def cpu_seconds(self) -> float:
        """User and system CPU time the process has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        # After the command name: state is field 3, utime 14 and stime 15.
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def rss_mib(self) -> float:
        """Resident memory of the process, in MiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmRSS for {self.name}")


def start_fake(log_dir: Path) -> Child:
    """The bundled fake Tinker in a process of its own."""
    args = command("fake-tinker", "--host", "127.0.0.1", "--port", "{port}")
    return _ready(Child("fake-tinker", args, log_dir, "/api/v1/healthz"))


def start_service(name: str, log_dir: Path, env: Mapping[str, str]) -> Child:
    """`tinker-recovery serve` in a process of its own, ready to answer."""
    return _ready(Child(name, command("serve"), log_dir, "/readyz", env))


def _ready(child: Child) -> Child:
    try:
        child.wait_ready()
    except BaseException:
        child.process.kill()
        child.process.wait(STOP_TIMEOUT_S)
        raise
    return child
