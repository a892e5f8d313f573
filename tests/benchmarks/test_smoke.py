"""The benchmark runs end to end in its smoke size and reports every figure."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.databases import need_postgres

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 60
FIGURES = {
    "throughput": ["baseline_polls_per_s", "poll_concurrency"],
    "lag": [
        "lateness_p50_s",
        "lateness_p99_s",
        "histogram_p99_s",
        "service_cpu_percent",
        "polls",
    ],
    "dispatch": ["poll_to_started_p50_ms", "poll_to_started_p99_ms", "measured"],
    "fanout": ["p50_ms", "p99_ms", "rss_per_subscriber_kib", "deliveries"],
    "memory": ["rss_mib", "watched_runs"],
}
SIZE_FIGURES = ["watched_runs", "service_polls_per_s", "ratio", "service_cpu_percent"]


def numbers_missing(value: Any, path: str = "") -> list[str]:
    """Paths in `value` that hold None or a value that is not a finite number."""
    if isinstance(value, dict):
        return [m for k, v in value.items() for m in numbers_missing(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [
            m for i, v in enumerate(value) for m in numbers_missing(v, f"{path}[{i}]")
        ]
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return [path]
    return []


@pytest.mark.slow
@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_smoke_benchmark_reports_every_figure(database: str, tmp_path: Path) -> None:
    if database == "postgres":
        need_postgres()
    out = tmp_path / "smoke.json"
    command = [sys.executable, "-m", "benchmarks.run", "--smoke"]
    finished = subprocess.run(
        [*command, "--database", database, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    report = json.loads(out.read_text())
    result = report["databases"][database]
    for part, names in FIGURES.items():
        for name in names:
            assert isinstance(result[part][name], int | float), f"{part}.{name}"
    sizes = result["throughput"]["sizes"]
    assert [size["watched_runs"] for size in sizes] == [20, 50, 100]
    for size in sizes:
        for name in SIZE_FIGURES:
            assert isinstance(size[name], int | float), name
    assert result["dispatch"]["measured"] > 0
    assert result["fanout"]["deliveries"] > 0
    assert numbers_missing(report) == []
    assert f"| {database} |" in finished.stdout
