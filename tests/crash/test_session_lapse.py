"""A service that stays down longer than Tinker keeps an idle session alive.

Nothing sends heartbeats while the process is dead, so Tinker may drop the
session a recovery was restarting in. When the load never took effect, the
new process must open a new session and restart the run there; when it did,
sending it again under its key must find the run already made, and nothing
else may be created.
"""

from __future__ import annotations

import time

import pytest

from tests.crash.harness import POLICY, Crash, check_history
from tests.crash.holds import endpoint
from tests.support.flow import fast_policy

RUN = "3c9d7a41-lapse-4e5f-8a6b-000000000001:train:0"
SESSION_TTL_S = 2.0
# Long enough to kill the process inside the call.
FAULT_DELAY_S = 3.0


def outlive_the_session(crash: Crash, *, load_acted: bool) -> None:
    crash.fake.configure(session_ttl_s=SESSION_TTL_S)
    crash.start()
    crash.fake.seed_run(RUN, checkpoints=["step-100", "step-200"])
    crash.watch(RUN, fast_policy(crash.api, **POLICY))
    crash.wait_for(
        lambda: crash.api.get(f"/runs/{RUN}").json()["last_polled_at"],
        "a first poll",
    )

    if load_acted:
        hold = crash.tinker.holds.hold(endpoint("load_weights"))
    else:
        # Held, then refused before it acts: the dead process leaves only the
        # session behind on Tinker.
        crash.fake.inject_fault("load_weights", delay_s=FAULT_DELAY_S, status=503)
    crash.fake.corrupt(RUN)
    if load_acted:
        hold.wait_reached()
    else:
        crash.wait_for(
            lambda: [c for c in crash.fake.calls("load_weights") if c.fault],
            "a held load_weights call",
        )
    (lapsed,) = crash.sessions_in_use()
    crash.kill()
    time.sleep(SESSION_TTL_S + 0.5)
    crash.start()

    (recovery,) = crash.wait_settled(1)
    assert recovery["status"] == "succeeded", recovery
    check_history(crash, {RUN}, sessions=1 if load_acted else 2)
    assert recovery["new_run_id"].startswith(lapsed) == load_acted
    crash.wait_heartbeats(crash.sessions_in_use() - {lapsed})


@pytest.mark.slow
@pytest.mark.parametrize("load_acted", [False, True], ids=["refused", "acted"])
def test_session_lapsed_while_down_sqlite(
    sqlite_crash: Crash, load_acted: bool
) -> None:
    outlive_the_session(sqlite_crash, load_acted=load_acted)
