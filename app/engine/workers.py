"""The worker pool: claims due recoveries and drives them, a bounded few at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import timedelta

from app.engine.attempts import ClaimLost, RecoveryDriver
from app.engine.context import EngineContext
from app.storage.claims import (
    claim_due_recoveries,
    next_recovery_due,
    release_claim,
    renew_lease,
)
from app.storage.db import transaction
from app.storage.types import utcnow

logger = logging.getLogger(__name__)


class WorkerPool:
    """Runs up to `max_concurrent` recoveries, each under a renewed lease."""

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx
        settings = ctx.settings
        self.max_concurrent = settings.max_concurrent
        self.lease = timedelta(milliseconds=settings.lease_ms)
        self.idle_s = settings.monitor_idle_ms / 1000
        self.grace_s = settings.shutdown_grace_ms / 1000
        self.active: dict[str, asyncio.Task[None]] = {}
        # Slots promised to recoveries claimed for this pool in a transaction
        # that has not ended yet (see `reserve`).
        self.reserved = 0
        self.stopping = asyncio.Event()
        self.woken = asyncio.Event()
        self.loop_task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """Look for work now rather than on the next tick."""
        self.woken.set()

    @property
    def running(self) -> bool:
        return self.loop_task is not None and not self.loop_task.done()

    async def start(self) -> None:
        self.loop_task = asyncio.create_task(self.run(), name="recovery-workers")

    async def stop(self) -> None:
        """Stop claiming; let steps reach a stored state, then hand claims back."""
        self.stopping.set()
        self.woken.set()
        if self.loop_task is not None:
            await self.loop_task
        if self.active:
            await asyncio.wait(list(self.active.values()), timeout=self.grace_s)
        for task in list(self.active.values()):
            task.cancel()
        if self.active:
            await asyncio.gather(*self.active.values(), return_exceptions=True)

    async def run(self) -> None:
        while not self.stopping.is_set():
            try:
                claimed = await self.claim()
            except Exception:
                logger.exception("workers.claim_failed")
                claimed = 0
            if claimed:
                continue
            await self.sleep()

    async def sleep(self) -> None:
        """Wait for a wake-up, a free slot, or the next due recovery."""
        timeout = self.idle_s
        if len(self.active) < self.max_concurrent:
            due = await self.next_due_in()
            if due is not None:
                timeout = min(timeout, max(due, 0.0))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.woken.wait()
        self.woken.clear()

    async def next_due_in(self) -> float | None:
        try:
            async with self.ctx.sessions() as session:
                when = await next_recovery_due(session)
        except Exception:
            logger.exception("workers.next_due_failed")
            return None
        return None if when is None else (when - utcnow()).total_seconds()

    def reserve(self) -> str | None:
        """A claim token for a recovery handed straight to this pool, if one fits.

        The caller claims the recovery with the token in its own transaction,
        then calls `adopt` once that has committed, or `unreserve` if it
        did not. A claim whose adoption never comes (the process died) lapses
        with its lease like any other.
        """
        busy = len(self.active) + self.reserved
        if self.stopping.is_set() or busy >= self.max_concurrent:
            return None
        self.reserved += 1
        return str(uuid.uuid4())

    def unreserve(self) -> None:
        """Give back a slot whose recovery was not claimed after all."""
        self.reserved -= 1

    def adopt(self, recovery_id: str, token: str) -> None:
        """Drive a recovery claimed for this pool under a token from `reserve`."""
        self.reserved -= 1
        self.launch(recovery_id, token)

    def launch(self, recovery_id: str, token: str) -> None:
        self.active[recovery_id] = asyncio.create_task(self.drive(recovery_id, token))

    async def claim(self) -> int:
        free = self.max_concurrent - len(self.active) - self.reserved
        if free <= 0:
            return 0
        # A token per claim, not per pool: when this pool takes back a
        # recovery whose lease lapsed under a driver of its own, the old
        # driver's writes must fail as those of any other lost claim do.
        token = str(uuid.uuid4())
        async with transaction(self.ctx.sessions) as session:
            ids = await claim_due_recoveries(session, utcnow(), free, token, self.lease)
        for recovery_id in ids:
            self.launch(recovery_id, token)
        return len(ids)

    async def drive(self, recovery_id: str, token: str) -> None:
        """Drive one recovery while a side task keeps its lease alive."""
        driver = RecoveryDriver(self.ctx, recovery_id, token)
        work = asyncio.create_task(driver.run(self.stopping))
        renewer = asyncio.create_task(self.renew(recovery_id, token, work))
        release = True
        try:
            await work
        except asyncio.CancelledError:
            work.cancel()
            raise
        except ClaimLost:
            logger.info("recovery.claim_lost", extra={"recovery_id": recovery_id})
        except Exception:
            # The claim is kept until its lease lapses, so that a step that
            # keeps failing is retried once a lease, not in a tight loop.
            release = False
            logger.exception(
                "recovery.step_crashed", extra={"recovery_id": recovery_id}
            )
        finally:
            renewer.cancel()
            if release:
                await asyncio.shield(self.release(recovery_id, token))
            if self.active.get(recovery_id) is asyncio.current_task():
                del self.active[recovery_id]
            self.woken.set()

    async def renew(
        self, recovery_id: str, token: str, work: asyncio.Task[None]
    ) -> None:
        interval = self.lease.total_seconds() / 3
        while True:
            await asyncio.sleep(interval)
            try:
                async with transaction(self.ctx.sessions) as session:
                    held = await renew_lease(
                        session, recovery_id, token, utcnow() + self.lease
                    )
            except Exception:
                logger.exception(
                    "recovery.renew_failed", extra={"recovery_id": recovery_id}
                )
                continue
            if not held:
                logger.warning(
                    "recovery.lease_lost", extra={"recovery_id": recovery_id}
                )
                work.cancel()
                return

    async def release(self, recovery_id: str, token: str) -> None:
        """Hand the claim back, if still ours, so that work moves on at once."""
        try:
            async with transaction(self.ctx.sessions) as session:
                await release_claim(session, recovery_id, token)
        except Exception:
            logger.exception(
                "recovery.release_failed", extra={"recovery_id": recovery_id}
            )
