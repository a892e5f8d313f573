"""Keeps the Tinker sessions the service created alive."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy import update
from sqlmodel import col, select

from app.engine.context import EngineContext
from app.storage.db import transaction
from app.storage.models import TinkerSession
from app.storage.types import utcnow
from app.tinker.errors import TinkerError

logger = logging.getLogger(__name__)

CONCURRENT_HEARTBEATS = 16


class Heartbeater:
    """Sends a heartbeat for every live session each interval, also after a restart.

    Sessions hold the runs the service restarted, so they are kept for as long
    as Tinker keeps them; a session Tinker reports gone is marked dead.
    """

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx
        self.interval_s = ctx.settings.heartbeat_interval_ms / 1000
        self.stopping = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.limit = asyncio.Semaphore(CONCURRENT_HEARTBEATS)

    async def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name="heartbeats")

    async def stop(self) -> None:
        self.stopping.set()
        if self.task is not None:
            await self.task

    async def run(self) -> None:
        while not self.stopping.is_set():
            try:
                await self.beat_all()
            except Exception:
                logger.exception("heartbeats.round_failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self.stopping.wait()

    async def beat_all(self) -> None:
        async with self.ctx.sessions() as session:
            rows = await session.exec(
                select(TinkerSession.session_id).where(col(TinkerSession.alive))
            )
            session_ids = list(rows)
        await asyncio.gather(*(self.beat(session_id) for session_id in session_ids))

    async def beat(self, session_id: str) -> None:
        async with self.limit:
            try:
                await self.ctx.tinker.heartbeat(session_id)
            except TinkerError as error:
                if error.code == "session_gone":
                    await self.mark(session_id, alive=False)
                    logger.warning(
                        "heartbeats.session_gone", extra={"session_id": session_id}
                    )
                else:
                    logger.warning(
                        "heartbeats.failed",
                        extra={"session_id": session_id, "code": error.code},
                    )
                return
        await self.mark(session_id, alive=True)

    async def mark(self, session_id: str, *, alive: bool) -> None:
        values: dict[str, object] = {"alive": alive}
        if alive:
            values["last_heartbeat_at"] = utcnow()
        async with transaction(self.ctx.sessions) as session:
            await session.exec(
                update(TinkerSession)
                .where(TinkerSession.session_id == session_id)  # type: ignore[arg-type]
                .values(**values)
            )
