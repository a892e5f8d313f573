"""Recover a corrupted run end to end, offline, and watch it happen live.

Starts the bundled fake Tinker and the recovery service on free loopback
ports (the service on a SQLite file in a temporary folder), seeds a training
run with two checkpoints, watches it under a fast policy, then has the fake
mark it `corrupted: true`. Every event of the run is printed as it arrives on
`GET /events/stream` (detected, started, checkpoint_selected, client_created,
completed), then the recovered run as `GET /runs/{new_run_id}` shows it.

No account, network or database server needed:

    python examples/01_recovery_simulated.py [--timeout SECONDS]

`tinker-recovery demo` runs the same flow. Exit code 0 when the run was
recovered, 1 when anything went wrong or took longer than the timeout.
"""

import argparse
import sys

from app.demo import TIMEOUT_S, run_demo


def main() -> int:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument(
        "--timeout", type=float, default=TIMEOUT_S, help="seconds to allow in all"
    )
    return run_demo(options.parse_args().timeout)


if __name__ == "__main__":
    sys.exit(main())
