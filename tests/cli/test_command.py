"""The `tinker-recovery` command as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def test_open_api_on_a_public_address_is_refused() -> None:
    done = run("serve", "--host", "0.0.0.0", env={"RECOVERY_API_TOKENS": ""})
    assert done.returncode != 0
    assert "without authentication" in done.stderr
    assert "RECOVERY_API_TOKENS" in done.stderr


def test_migrate_up_and_down(tmp_path: Path) -> None:
    env = {"RECOVERY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db"}
    assert run("migrate", env=env).returncode == 0
    down = run("migrate", "--downgrade", env=env)
    assert down.returncode == 0, down.stderr
    assert "base" in down.stdout


def test_openapi_to_stdout_matches_the_committed_file() -> None:
    done = run("openapi", "-o", "-")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == json.loads((ROOT / "openapi.json").read_text())
