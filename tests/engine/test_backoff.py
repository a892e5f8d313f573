"""The delay between attempts: the formula, its cap, jitter, and what is stored."""

from __future__ import annotations

import random
from datetime import datetime
from itertools import pairwise
from typing import Any

import httpx
import pytest

from app.engine.backoff import backoff_delay_ms
from app.tinker.fake_control import FakeTinkerControl
from tests.engine.recovery import recoveries, seed, wait_recovery, watch
from tests.support.flow import fast_policy, wait_for

RUN = "55555555-aaaa-4bbb-8ccc-000000000007:train:0"


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(1, 1_000), (2, 2_000), (3, 4_000), (4, 8_000), (5, 10_000), (60, 10_000)],
)
def test_doubles_up_to_the_cap(attempt: int, expected: int) -> None:
    assert backoff_delay_ms(attempt, 1_000, 10_000, "none") == expected


def test_matches_the_formula() -> None:
    for base in (1, 7, 250, 5_000):
        for cap in (base, base * 3, 60_000):
            for n in range(1, 80):
                expected = min(base * 2 ** (n - 1), cap)
                assert backoff_delay_ms(n, base, cap, "none") == expected


def test_cap_equal_to_base_is_constant() -> None:
    assert {backoff_delay_ms(n, 500, 500, "none") for n in range(1, 20)} == {500}


def test_full_jitter_stays_within_the_cap() -> None:
    rng = random.Random(1234)
    for n in range(1, 8):
        cap = min(100 * 2 ** (n - 1), 1_000)
        draws = [backoff_delay_ms(n, 100, 1_000, "full", rng) for _ in range(500)]
        assert all(0 <= d <= cap for d in draws)
        # Uniform over [0, cap]: both ends of the range are reached in 500 draws.
        assert min(draws) < cap * 0.1
        assert max(draws) > cap * 0.9


def test_full_jitter_is_reproducible_with_a_seeded_rng() -> None:
    first = [backoff_delay_ms(3, 100, 1_000, "full", random.Random(7)) for _ in "ab"]
    assert first[0] == first[1]


def test_attempts_count_from_one() -> None:
    with pytest.raises(ValueError):
        backoff_delay_ms(0, 100, 1_000, "none")


def stored_delay_ms(recovery: dict[str, Any]) -> float:
    """The delay the service stored: next attempt minus end of the last one."""
    failed = recovery["attempts"][-1]
    ended = datetime.fromisoformat(failed["finished_at"])
    due = datetime.fromisoformat(recovery["next_attempt_at"])
    return (due - ended).total_seconds() * 1000


def test_stored_next_attempt_follows_the_schedule(
    api: httpx.Client, fake: FakeTinkerControl
) -> None:
    seed(fake, RUN, "step-100", corrupted=True)
    fake.inject_fault("load_weights", status=503, count=2)
    # 600 ms, then 1200 ms capped to 900 ms; the third attempt succeeds.
    policy = fast_policy(api, backoff_ms=600, max_backoff_ms=900, max_attempts=3)
    watch(api, RUN, policy)

    delays = {}
    for failed in (1, 2):

        def in_backoff(failed: int = failed) -> dict[str, Any] | None:
            found = recoveries(api, RUN)
            waiting = found and found[0]["status"] == "backoff"
            if waiting and len(found[0]["attempts"]) == failed:
                recovery: dict[str, Any] = found[0]
                return recovery
            return None

        delays[failed] = stored_delay_ms(wait_for(in_backoff))

    assert delays[1] == pytest.approx(600, abs=5)
    assert delays[2] == pytest.approx(900, abs=5)
    recovery = wait_recovery(api, RUN)
    assert recovery["status"] == "succeeded", recovery
    assert len(recovery["attempts"]) == 3
    # The next attempt did not start before its time.
    for failed, following in pairwise(recovery["attempts"]):
        gap = datetime.fromisoformat(following["started_at"]) - datetime.fromisoformat(
            failed["finished_at"]
        )
        assert gap.total_seconds() * 1000 >= delays[failed["attempt"]] - 5


def test_stored_delay_with_full_jitter_stays_within_the_cap(
    api: httpx.Client, fake: FakeTinkerControl
) -> None:
    seed(fake, RUN, "step-100", corrupted=True)
    fake.inject_fault("load_weights", status=503, count=None)
    policy = fast_policy(
        api, backoff_ms=60_000, max_backoff_ms=60_000, jitter="full", max_attempts=5
    )
    watch(api, RUN, policy)

    def in_backoff() -> dict[str, Any] | None:
        found = recoveries(api, RUN)
        return found[0] if found and found[0]["status"] == "backoff" else None

    delay = stored_delay_ms(wait_for(in_backoff))
    assert -5 <= delay <= 60_005
