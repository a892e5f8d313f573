"""Quantiles of samples and of Prometheus histograms."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def quantile(samples: Sequence[float], q: float) -> float:
    """The `q` quantile of `samples`, interpolated between the nearest two."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Histogram:
    """Cumulative bucket counts of one Prometheus histogram."""

    bounds: tuple[float, ...]
    counts: tuple[float, ...]

    def minus(self, earlier: Histogram) -> Histogram:
        """The observations made since `earlier` was read."""
        counts = tuple(a - b for a, b in zip(self.counts, earlier.counts, strict=True))
        return Histogram(self.bounds, counts)

    @property
    def total(self) -> float:
        return self.counts[-1] if self.counts else 0.0

    def quantile(self, q: float) -> float:
        """The `q` quantile, linear inside a bucket as Prometheus interpolates."""
        if self.total <= 0:
            raise ValueError("an empty histogram has no quantiles")
        rank = q * self.total
        lower_bound, lower_count = 0.0, 0.0
        for bound, count in zip(self.bounds, self.counts, strict=True):
            if count >= rank:
                if math.isinf(bound):
                    return lower_bound
                inside = (rank - lower_count) / max(count - lower_count, 1e-12)
                return lower_bound + (bound - lower_bound) * inside
            lower_bound, lower_count = bound, count
        return lower_bound


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples of the Prometheus text format, by metric name."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, label_text = head.partition("{")
        labels = {}
        for pair in label_text.rstrip("}").split(","):
            if "=" in pair:
                key, _, raw = pair.partition("=")
                labels[key.strip()] = raw.strip().strip('"')
        samples.setdefault(name, []).append((labels, float(value)))
    return samples


def counter_total(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str
) -> float:
    """The sum of a counter over all its labels."""
    return sample_sum(samples, f"{name}_total")


def sample_sum(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str
) -> float:
    """The sum of the samples of one name over all their labels."""
    return sum(value for _, value in samples.get(name, []))


def histogram(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str
) -> Histogram:
    """The buckets of one unlabelled histogram."""
    buckets = sorted(
        (float(labels["le"]), value) for labels, value in samples[f"{name}_bucket"]
    )
    return Histogram(tuple(b for b, _ in buckets), tuple(c for _, c in buckets))
