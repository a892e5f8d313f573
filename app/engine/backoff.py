"""When the next attempt of a recovery may start."""

from __future__ import annotations

import random


def backoff_delay_ms(
    failed_attempt: int,
    backoff_ms: int,
    max_backoff_ms: int,
    jitter: str,
    rng: random.Random | None = None,
) -> int:
    """The delay before attempt `failed_attempt + 1`.

    `min(backoff_ms * 2^(n-1), max_backoff_ms)`; with full jitter, a uniform
    draw between 0 and that.
    """
    if failed_attempt < 1:
        raise ValueError("attempts are numbered from 1")
    exponent = min(failed_attempt - 1, 62)
    capped = min(backoff_ms * (1 << exponent), max_backoff_ms)
    if jitter == "full":
        return (rng or random).randint(0, capped)
    return capped
