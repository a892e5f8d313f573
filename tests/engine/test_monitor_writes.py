"""The monitor's batch writer keeps going when one write hangs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.config import Settings
from app.engine import monitor as monitor_module
from app.engine.context import EngineContext
from app.engine.monitor import Monitor, PollResult
from app.storage.types import utcnow


async def test_a_hung_batch_write_is_abandoned_and_the_next_one_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The writer is replaced below: no database or Tinker is reached.
    nothing: Any = None
    ctx = EngineContext(settings=Settings(), sessions=nothing, tinker=nothing)
    monitor = Monitor(ctx)
    monkeypatch.setattr(monitor_module, "RECORD_TIMEOUT_S", 0.05)
    written: list[list[PollResult]] = []

    async def first_hangs(batch: list[PollResult]) -> None:
        if not written:
            written.append([])
            await asyncio.Event().wait()
        written.append(batch)

    monkeypatch.setattr(monitor, "write_batch", first_hangs)
    async with asyncio.timeout(5):
        await monitor.record([PollResult("run-1", utcnow())])
        second = [PollResult("run-2", utcnow())]
        await monitor.record(second)
    assert written == [[], second]
