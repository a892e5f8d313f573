"""The benchmark's figures as a Markdown table, beside their targets."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any


def _fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def database_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, measured, target) rows of one database's results."""
    rows: list[tuple[str, str, str]] = []
    if "throughput" in result:
        rows += _throughput_rows(result["throughput"])
    if "lag" in result:
        rows += [_lag_row(result["lag"]), _dispatch_row(result["dispatch"])]
    if "fanout" in result:
        rows.append(_fanout_row(result["fanout"]))
    if "memory" in result:
        rows.append(_memory_row(result["memory"]))
    return rows


def _throughput_rows(t: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = [
        (
            f"bare aiohttp loop, concurrency {t['poll_concurrency']}",
            f"{_fmt(t['baseline_polls_per_s'])} polls/s",
            "",
        )
    ]
    for size in t["sizes"]:
        rows.append(
            (
                f"service polls/s, {size['watched_runs']:,} runs "
                f"every {t['interval_ms']} ms",
                f"{_fmt(size['service_polls_per_s'])} polls/s, ratio "
                f"{size['ratio']:.2f} (CPU {size['service_cpu_percent']:.0f}%); "
                f"registered {size.get('registrations_per_s', math.nan):.0f}/s",
                ">= 700 polls/s, ratio >= 0.5",
            )
        )
    return rows


def _lag_row(lag: dict[str, Any]) -> tuple[str, str, str]:
    return (
        f"poll lateness, {lag['watched_runs']:,} runs every "
        f"{lag['interval_ms'] / 1000:g} s, {lag['window_s']:.0f} s "
        f"({lag['polls']:,} polls)",
        f"p50 {lag['lateness_p50_s'] * 1000:,.0f} ms, p99 "
        f"{lag['lateness_p99_s'] * 1000:,.0f} ms (the service's histogram, "
        f"interpolated in its buckets: p50 {lag['histogram_p50_s'] * 1000:,.0f} ms, "
        f"p99 {lag['histogram_p99_s'] * 1000:,.0f} ms); CPU "
        f"{lag['service_cpu_percent']:.0f}%; "
        + _per_write(lag)
        + f"registered {lag.get('registrations_per_s', math.nan):.0f}/s",
        "p99 < 1 s",
    )


def _dispatch_row(d: dict[str, Any]) -> tuple[str, str, str]:
    return (
        f"corrupted poll -> started, {d['measured']}/{d['corruptions']} runs",
        _ms_pair(d["poll_to_started_p50_ms"], d["poll_to_started_p99_ms"])
        + " (from `detected`: "
        + _ms_pair(d["detected_to_started_p50_ms"], d["detected_to_started_p99_ms"])
        + ")",
        "p99 < 100 ms",
    )


def _fanout_row(f: dict[str, Any]) -> tuple[str, str, str]:
    return (
        f"event -> {f['subscribers']:,} SSE subscribers, {f['events']} events "
        f"({f['deliveries']:,}/{f['expected_deliveries']:,} delivered)",
        f"p50 {f['p50_ms']:.0f} ms, p99 {f['p99_ms']:.0f} ms; "
        f"{f['rss_per_subscriber_kib']:.0f} KiB per subscriber",
        "p99 < 250 ms",
    )


def _memory_row(m: dict[str, Any]) -> tuple[str, str, str]:
    return (
        f"service RSS, {m['watched_runs']:,} watched runs",
        f"{m['rss_mib']:.0f} MiB (max {m['rss_max_mib']:.0f} MiB)",
        "< 300 MiB",
    )


def _per_write(lag: dict[str, Any]) -> str:
    if "polls_per_write_transaction" not in lag:
        return ""
    return f"{lag['polls_per_write_transaction']:.0f} polls per write transaction; "


def _ms_pair(p50: float | None, p99: float | None) -> str:
    if p50 is None or p99 is None:
        return "not measured"
    return f"p50 {p50:,.0f} ms, p99 {p99:,.0f} ms"


def table(report: dict[str, Any]) -> str:
    """Every database's figures, one Markdown table."""
    lines = ["| database | figure | measured | target |", "| --- | --- | --- | --- |"]
    for kind, result in report["databases"].items():
        for figure, measured, target in database_rows(result):
            lines.append(f"| {kind} | {figure} | {measured} | {target} |")
    m = report["machine"]
    lines.append("")
    if report.get("profile") == "smoke":
        lines.append(
            "Smoke profile: sizes too small to be held to the targets, which are "
            "for the full run."
        )
    lines.append(
        f"{m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB; load average "
        f"{_loads(m['load_average_start'])} at the start, "
        f"{_loads(m.get('load_average_end', []))} at the end"
    )
    return "\n".join(lines)


def _loads(values: list[float]) -> str:
    return " / ".join(f"{value:.2f}" for value in values)


def main(argv: list[str] | None = None) -> None:
    """Print the table of a results file: `python -m benchmarks.report FILE`."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.report",
        description="Print the table of a file written by `benchmarks.run --out`.",
    )
    parser.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    try:
        report = json.loads(args.file.read_text())
    except OSError as error:
        parser.error(f"cannot read {args.file}: {error.strerror}")
    except (UnicodeDecodeError, json.JSONDecodeError):
        parser.error(f"{args.file} is not JSON")
    try:
        print(table(report))
    except (KeyError, TypeError, AttributeError):
        parser.error(f"{args.file} is not a results file of benchmarks.run")


if __name__ == "__main__":
    main()
