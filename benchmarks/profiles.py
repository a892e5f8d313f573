"""How big and how long each part of the benchmark is: full, or a smoke test."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    """Sizes and durations of one benchmark run."""

    name: str
    poll_concurrency: int
    throughput_runs: tuple[int, ...]
    throughput_interval_ms: int
    throughput_warmup_s: float
    throughput_window_s: float
    lag_runs: int
    lag_interval_ms: int
    lag_warmup_s: float
    lag_window_s: float
    corruptions: int
    corruption_spacing_s: float
    subscribers: int
    subscriber_processes: int
    fanout_events: int
    fanout_spacing_s: float
    fanout_warmup: int = 5
    dispatch_wait_s: float = 30.0
    max_concurrent: int = 16

    @property
    def fake_runs(self) -> int:
        return max(max(self.throughput_runs), self.lag_runs)


FULL = Profile(
    name="full",
    poll_concurrency=64,
    throughput_runs=(1_000, 5_000, 10_000),
    throughput_interval_ms=100,
    throughput_warmup_s=5.0,
    throughput_window_s=15.0,
    lag_runs=10_000,
    lag_interval_ms=15_000,
    lag_warmup_s=20.0,
    lag_window_s=120.0,
    corruptions=100,
    corruption_spacing_s=1.0,
    subscribers=1_000,
    subscriber_processes=2,
    fanout_events=60,
    fanout_spacing_s=0.25,
)

SMOKE = Profile(
    name="smoke",
    poll_concurrency=16,
    throughput_runs=(20, 50, 100),
    throughput_interval_ms=100,
    throughput_warmup_s=0.3,
    throughput_window_s=1.0,
    lag_runs=100,
    lag_interval_ms=1_000,
    lag_warmup_s=0.5,
    lag_window_s=3.0,
    corruptions=3,
    corruption_spacing_s=0.2,
    subscribers=20,
    subscriber_processes=2,
    fanout_events=5,
    fanout_spacing_s=0.1,
    fanout_warmup=1,
    dispatch_wait_s=5.0,
    max_concurrent=4,
)
