"""Fixtures for crash tests: the fake Tinker in this process, the service in another."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.tinker.fake import create_fake_tinker_app
from app.tinker.fake_control import FakeTinkerControl
from tests.crash.harness import Crash, FakeTinker
from tests.crash.holds import AnswerHolds
from tests.support.databases import postgres_database
from tests.support.servers import serve

MakeCrash = Callable[[str], Crash]


@pytest.fixture
def tinker() -> Iterator[FakeTinker]:
    """A fresh fake Tinker whose answers a test can hold back."""
    holds = AnswerHolds(create_fake_tinker_app())
    with serve(holds) as server, FakeTinkerControl(server.url) as control:
        try:
            yield FakeTinker(server.url, control, holds)
        finally:
            holds.release_all()


@pytest.fixture
def make_crash(tinker: FakeTinker, tmp_path: Path) -> Iterator[MakeCrash]:
    """Build service processes; every one is killed when the test ends."""
    made: list[Crash] = []

    def make(database_url: str) -> Crash:
        log = tmp_path / f"service-{len(made)}.log"
        crash = Crash(tinker, database_url, log, RECOVERY_MAX_CONCURRENT="4")
        made.append(crash)
        return crash

    yield make
    for crash in made:
        crash.close()
        print(f"service log {crash.process.log_path}:\n{crash.process.log_tail(30)}")


@pytest.fixture
def sqlite_crash(make_crash: MakeCrash, tmp_path: Path) -> Crash:
    """A service process on a SQLite file, not started yet."""
    return make_crash(f"sqlite+aiosqlite:///{tmp_path}/recovery.db")


@pytest.fixture
def postgres_crash(make_crash: MakeCrash) -> Iterator[Crash]:
    """A service process on a Postgres database of its own, not started yet."""
    with postgres_database("recovery_crash") as url:
        crash = make_crash(url)
        yield crash
        crash.close()
