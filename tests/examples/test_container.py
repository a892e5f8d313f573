"""The Dockerfile, checked without a Docker engine: lint, what it installs, its
health check and the settings its environment gives the service."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy.engine import make_url

from app.config import Settings
from tests.examples.running import BIN, ROOT, clean_env, run
from tests.support.servers import ThreadedServer, free_port

DOCKERFILE = ROOT / "Dockerfile"


def instructions(name: str) -> list[str]:
    """The arguments of every `name` instruction, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    prefix = name + " "
    return [
        line[len(prefix) :] for line in text.splitlines() if line.startswith(prefix)
    ]


def image_env() -> dict[str, str]:
    """The environment the image sets with ENV."""
    pairs = [shlex.split(args) for args in instructions("ENV")]
    return dict(pair.split("=", 1) for args in pairs for pair in args)


def build_context(into: Path) -> Path:
    """Copy what the build stage COPYs from the context, as Docker would."""
    into.mkdir(parents=True)
    for args in instructions("COPY"):
        if args.startswith("--from"):
            continue
        *sources, _ = args.split()
        for source in sources:
            origin = ROOT / source
            if origin.is_dir():
                shutil.copytree(
                    origin, into / source, ignore=shutil.ignore_patterns("__pycache__")
                )
            else:
                shutil.copy(origin, into / source)
    return into


def test_hadolint_finds_nothing() -> None:
    done = run(BIN / "hadolint", "--failure-threshold", "style", DOCKERFILE)

    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == ""


def test_the_image_runs_the_service_as_a_user_on_a_volume() -> None:
    assert instructions("FROM")[-1].startswith("python:3.11-slim")
    assert instructions("USER") == ["10001:10001"]
    assert instructions("VOLUME") == ["/data"]
    assert instructions("EXPOSE") == ["8000"]
    assert json.loads(instructions("CMD")[-1]) == ["tinker-recovery", "serve"]


def test_the_image_settings_need_api_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    env = image_env()
    for name in list(os.environ):
        if name.startswith(("RECOVERY_", "TINKER_")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(ValidationError, match="RECOVERY_API_TOKENS"):
        Settings()
    monkeypatch.setenv("RECOVERY_API_TOKENS", "a-token")
    settings = Settings()

    assert "RECOVERY_ALLOW_INSECURE" not in env
    assert make_url(settings.database_url).database == "/data/recovery.db"
    assert (settings.host, settings.port) == ("0.0.0.0", 8000)


def health_check(port: int) -> subprocess.CompletedProcess[str]:
    """Run the image's HEALTHCHECK command against a port on this machine."""
    command = json.loads(instructions("HEALTHCHECK")[0].split(" CMD ", 1)[1])
    assert command[0] == "python"
    return subprocess.run(
        [sys.executable, *command[1:]],
        env=clean_env(RECOVERY_PORT=str(port)),
        capture_output=True,
        text=True,
        timeout=30,
    )


def run_in(
    folder: Path, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    """Run Python in `folder`, away from the source tree."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_health_check_passes_on_a_live_service(service: ThreadedServer) -> None:
    assert health_check(service.port).returncode == 0
    assert health_check(free_port()).returncode != 0


@pytest.mark.slow
def test_the_wheel_carries_the_app_and_its_migrations(tmp_path: Path) -> None:
    context = build_context(tmp_path / "context")
    pip = [sys.executable, "-m", "pip"]
    built = run(*pip, "wheel", "--no-deps", "--no-cache-dir", context, "-w", tmp_path)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = tmp_path.glob("tinker_recovery-*.whl")

    names = set(zipfile.ZipFile(wheel).namelist())
    versions = {
        f"migrations/versions/{p.name}" for p in ROOT.glob("migrations/versions/*.py")
    }
    assert versions and versions <= names
    assert {"app/main.py", "app/cli.py", "migrations/env.py"} <= names
    assert "migrations/script.py.mako" in names

    site = tmp_path / "site"
    installed = run(*pip, "install", "--no-deps", "--target", site, wheel)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    database = tmp_path / "recovery.db"
    env = clean_env(
        PYTHONPATH=str(site), RECOVERY_DATABASE_URL=f"sqlite+aiosqlite:///{database}"
    )
    where = "import app, migrations; print(app.__file__, migrations.__file__)"
    imported = run_in(tmp_path, env, "-c", where)
    migrated = run_in(tmp_path, env, "-m", "app.cli", "migrate")

    assert imported.returncode == 0, imported.stderr
    assert all(path.startswith(str(site)) for path in imported.stdout.split())
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    with sqlite3.connect(database) as db:
        (revision,) = db.execute("SELECT version_num FROM alembic_version").fetchone()
    assert revision
