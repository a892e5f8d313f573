"""Prometheus metrics of the service."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

POLLS = Counter(
    "recovery_polls_total", "Polls of Tinker training runs, by outcome", ["outcome"]
)
POLL_LATENESS = Histogram(
    "recovery_poll_lateness_seconds",
    "How late each poll started against its schedule",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
POLL_BATCH = Histogram(
    "recovery_poll_write_batch_size",
    "Poll results written per transaction",
    buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500),
)
RECOVERIES = Counter(
    "recovery_recoveries_total", "Recoveries that ended, by outcome", ["outcome"]
)
