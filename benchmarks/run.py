"""Run the benchmark: `python -m benchmarks.run [--smoke] [--database ...]`.

Starts the fake Tinker and, for each part, a fresh service on a fresh
database, each in a process of its own on loopback; prints a table and
writes every figure as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.databases import postgres_available
from benchmarks.procs import start_fake
from benchmarks.profiles import FULL, SMOKE, Profile
from benchmarks.report import table
from benchmarks.scenarios import Bench, fanout, lag, seed_fake, throughput

DEFAULT_OUT = Path("benchmarks/results/latest.json")


def machine() -> dict[str, Any]:
    """What the figures were measured on, and how busy it was."""
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(pages / 2**30, 1),
        "python": platform.python_version(),
        "load_average_start": list(os.getloadavg()),
    }


PARTS = ("throughput", "lag", "fanout")


def run_database(
    profile: Profile,
    database: str,
    folder: Path,
    log: Callable[[str], None],
    parts: tuple[str, ...] = PARTS,
) -> dict[str, Any]:
    """The chosen parts of the benchmark on one kind of database."""
    fake = start_fake(folder)
    try:
        run_ids = [f"bench-run-{i}:train:0" for i in range(profile.fake_runs)]
        log(f"[{database}] seeding {len(run_ids)} runs on the fake")
        seeded_s = seed_fake(fake, run_ids)
        bench = Bench(profile, fake, database, folder, run_ids)
        result: dict[str, Any] = {"fake_seed_s": seeded_s}
        if "throughput" in parts:
            log(f"[{database}] poll throughput")
            result["throughput"] = throughput(bench)
        if "lag" in parts:
            log(f"[{database}] poll lag, dispatch, memory")
            result.update(lag(bench))
        if "fanout" in parts:
            log(f"[{database}] fan-out")
            result["fanout"] = fanout(bench)
        return result
    finally:
        fake.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run")
    parser.add_argument("--smoke", action="store_true", help="small and short")
    parser.add_argument(
        "--database", choices=("sqlite", "postgres", "both"), default="both"
    )
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"which parts, comma-separated (default: {','.join(PARTS)})",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    parts = tuple(part.strip() for part in args.parts.split(",") if part.strip())
    if not parts or any(part not in PARTS for part in parts):
        parser.error(f"--parts {args.parts!r}: takes some of {', '.join(PARTS)}")
    profile = SMOKE if args.smoke else FULL
    kinds = ["sqlite", "postgres"] if args.database == "both" else [args.database]
    if "postgres" in kinds and not postgres_available():
        parser.error("PostgreSQL is not reachable (RECOVERY_TEST_POSTGRES_URL)")

    # A place that cannot be written is found now, not after the run.
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        parser.error(f"--out {args.out}: cannot write there ({error})")
    if args.out.is_dir() or not os.access(args.out.parent, os.W_OK):
        parser.error(f"--out {args.out}: cannot write there")

    def log(line: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)

    report: dict[str, Any] = {
        "profile": profile.name,
        "settings": profile.__dict__
        | {"throughput_runs": list(profile.throughput_runs)},
        "machine": machine(),
        "databases": {},
    }
    for kind in kinds:
        with tempfile.TemporaryDirectory(prefix=f"bench-{kind}-") as folder:
            try:
                report["databases"][kind] = run_database(
                    profile, kind, Path(folder), log, parts
                )
            finally:
                _keep_logs(Path(folder), args.out.parent / "logs")
        # Written after each database, so that a run cut short keeps its figures.
        report["machine"]["load_average_end"] = list(os.getloadavg())
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"written to {args.out}")
    return 0


def _keep_logs(folder: Path, logs: Path) -> None:
    logs.mkdir(parents=True, exist_ok=True)
    for path in folder.glob("*.log"):
        (logs / path.name).write_bytes(path.read_bytes())


if __name__ == "__main__":
    raise SystemExit(main())
