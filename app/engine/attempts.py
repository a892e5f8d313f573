"""Walking one recovery through its attempts, one stored step at a time.

Each step reads the stored state, does at most one piece of outside work
(a Tinker call, or waiting for a trainer), and writes its outcome together
with its event. A process that dies between steps leaves a state that the
next owner of the claim carries on from: an idempotency key is stored before
the request that uses it, and a stored request id is resumed, never re-sent.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.engine.backoff import backoff_delay_ms
from app.engine.checkpoints import Choice, NoCheckpoint, resumable, select_checkpoint
from app.engine.commands import cancel_recovery, register_run
from app.engine.context import EngineContext
from app.events.store import append_event
from app.metrics import RECOVERIES
from app.storage.db import on_commit, transaction
from app.storage.models import (
    Attempt,
    AttemptStatus,
    Policy,
    Recovery,
    RecoveryStatus,
    Run,
    RunStatus,
    TinkerSession,
)
from app.storage.types import utcnow
from app.tinker.errors import TinkerError
from app.tinker.paths import parse_tinker_path
from app.webhooks.outbox import enqueue_webhook

logger = logging.getLogger(__name__)

# Failures that say the checkpoint itself cannot be loaded, so that retrying
# it is pointless and an older one may be tried instead.
CHECKPOINT_FAILURES = frozenset(
    {"bad_request", "not_found", "invalid_request", "load_failed", "checkpoint_expired"}
)


class ClaimLost(Exception):
    """Another worker owns the recovery now; this one must stop touching it."""


class AttemptFailed(Exception):
    """An attempt failed with a classified error."""

    def __init__(self, code: str, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.error = {"code": code, "message": message, "retryable": retryable}

    @classmethod
    def from_tinker(cls, error: TinkerError) -> AttemptFailed:
        return cls(error.code, error.message, error.retryable)

    @classmethod
    def timed_out(cls) -> AttemptFailed:
        return cls("attempt_timeout", "the attempt outlived attempt_timeout_ms", True)


@dataclass
class Snapshot:
    """The stored state a step starts from."""

    recovery: Recovery
    run: Run
    policy: Policy | None
    attempt: Attempt | None


class RecoveryDriver:
    """Carries one claimed recovery forward until it ends or is handed back."""

    def __init__(self, ctx: EngineContext, recovery_id: str, token: str) -> None:
        self.ctx = ctx
        self.recovery_id = recovery_id
        self.token = token
        self.log = {"recovery_id": recovery_id}
        self.session_renewed = False

    async def run(self, stopping: asyncio.Event) -> None:
        """Take steps until the recovery leaves `running` or the pool stops."""
        while not stopping.is_set():
            if not await self.step():
                return

    async def step(self) -> bool:
        """Take the next step; False once there is nothing more to do now."""
        snap = await self.load()
        if snap.recovery.status != RecoveryStatus.running:
            return False
        attempt = snap.attempt
        try:
            if attempt is None or attempt.status == AttemptStatus.failed:
                return await self.begin_attempt(snap)
            left = self.time_left(attempt)
            if left is not None and left <= 0:
                raise AttemptFailed.timed_out()
            async with self.deadline(left):
                return await self.advance(snap, attempt)
        except AttemptFailed as failure:
            assert attempt is not None
            await self.fail(attempt.attempt, failure.error)
        except TinkerError as error:
            assert attempt is not None
            await self.fail(attempt.attempt, AttemptFailed.from_tinker(error).error)
        return False

    async def advance(self, snap: Snapshot, attempt: Attempt) -> bool:
        """Take the attempt's next step; False once the recovery has ended."""
        if attempt.status == AttemptStatus.selecting:
            return await self.select(snap, attempt)
        if attempt.status == AttemptStatus.restarting:
            await self.restart(snap.recovery, attempt)
            return True
        if attempt.status == AttemptStatus.waiting_trainer:
            return await self.await_trainer(attempt)
        if attempt.status == AttemptStatus.verifying:
            # Success ends the recovery and hands its claim back with it.
            await self.verify(attempt)
        return False

    def time_left(self, attempt: Attempt) -> float | None:
        """Seconds the attempt may still take, if it has a deadline."""
        if attempt.deadline is None:
            return None
        deadline = attempt.deadline
        if trainer_reported(attempt):
            # The report beat the deadline, which is all the deadline asked of
            # the trainer; reading its run back gets one Tinker request's time.
            deadline += timedelta(milliseconds=self.ctx.settings.tinker_timeout_ms)
        return (deadline - utcnow()).total_seconds()

    @asynccontextmanager
    async def deadline(self, left: float | None) -> AsyncIterator[None]:
        """Fail the attempt as retryable when it outlives its deadline."""
        try:
            async with asyncio.timeout(None if left is None else max(left, 0.0)):
                yield
        except TimeoutError as error:
            raise AttemptFailed.timed_out() from error

    # Reading and writing under the claim

    async def load(self) -> Snapshot:
        async with self.ctx.sessions() as session:
            recovery = await self.claimed(session, lock=False)
            run = await session.get(Run, recovery.run_id)
            assert run is not None
            policy = await session.get(Policy, run.policy_id) if run.policy_id else None
            attempt = await current_attempt(session, recovery)
            return Snapshot(recovery, run, policy, attempt)

    async def claimed(self, session: AsyncSession, *, lock: bool = True) -> Recovery:
        """The recovery, if this worker still holds its claim."""
        recovery = await session.get(
            Recovery, self.recovery_id, with_for_update=lock, populate_existing=True
        )
        if recovery is None or recovery.claim_token != self.token:
            raise ClaimLost(self.recovery_id)
        return recovery

    @asynccontextmanager
    async def write(self) -> AsyncIterator[tuple[AsyncSession, Recovery]]:
        """A transaction that commits only while the claim is still ours."""
        async with transaction(self.ctx.sessions) as session:
            recovery = await self.claimed(session)
            yield session, recovery

    async def event(
        self,
        session: AsyncSession,
        recovery: Recovery,
        type: str,
        attempt: int | None,
        data: dict[str, Any] | None = None,
    ) -> None:
        await append_event(
            session,
            type,
            recovery.run_id,
            recovery_id=recovery.id,
            attempt=attempt,
            data=data,
        )

    # The steps

    async def begin_attempt(self, snap: Snapshot) -> bool:
        """Open attempt n + 1, or cancel when the run is no longer watched."""
        policy = snap.policy
        async with self.write() as (session, recovery):
            if policy is None or (
                snap.run.status == RunStatus.stopped and recovery.trigger == "detected"
            ):
                await cancel_recovery(session, recovery, "the run is no longer watched")
                await self.release_run(session, recovery, RunStatus.stopped)
                return False
            await open_attempt(session, recovery, policy)
        return True

    async def select(self, snap: Snapshot, attempt: Attempt) -> bool:
        """Choose the checkpoint and store what the restart will need."""
        assert snap.policy is not None
        failed = await self.failed_checkpoints(snap.recovery)
        choice = self.choice(snap.recovery, snap.policy)
        source = snap.run.run_id
        if choice.strategy == "specific" and choice.path and not failed:
            source = parse_tinker_path(choice.path).run_id
        checkpoints = await self.ctx.tinker.list_checkpoints(source)
        now = utcnow()
        try:
            path = select_checkpoint(choice, checkpoints, failed=failed, now=now)
        except NoCheckpoint as missing:
            raise AttemptFailed(missing.code, missing.message, False) from missing
        chosen = next((c for c in checkpoints if c.tinker_path == path), None)
        older = [
            c for c in resumable(checkpoints, now) if chosen and c.time < chosen.time
        ]
        trainer = snap.policy.restart_mode == "trainer"
        async with self.write() as (session, recovery):
            row = await self.attempt_row(session, attempt.attempt)
            row.checkpoint_path = path
            row.fallbacks_left = len([c for c in older if c.tinker_path not in failed])
            await self.assign_restart_key(session, row)
            row.status = (
                AttemptStatus.waiting_trainer if trainer else AttemptStatus.restarting
            )
            data = {"checkpoint": path, "restore_optimizer": row.restore_optimizer}
            await self.event(
                session, recovery, "checkpoint_selected", row.attempt, data
            )
            if trainer:
                await self.request_trainer_restart(session, recovery, row, snap)
        return not trainer

    async def assign_restart_key(self, session: AsyncSession, row: Attempt) -> None:
        """Give the attempt its model_seq_id and idempotency key, stored before use.

        When the previous attempt sent the same restart but failed before it
        learned whether Tinker acted (a dropped connection, a timeout), its key
        is sent again: a load that had taken effect is then answered as before,
        and no second run is created for one corruption.
        """
        previous = None
        if row.attempt > 1:
            previous = await session.get(Attempt, (self.recovery_id, row.attempt - 1))
        if (
            previous is not None
            and previous.request_id is None
            and previous.idempotency_key is not None
            and previous.model_seq_id is not None
            and (previous.error or {}).get("retryable")
            and previous.checkpoint_path == row.checkpoint_path
            and previous.restore_optimizer == row.restore_optimizer
        ):
            row.model_seq_id = previous.model_seq_id
            row.idempotency_key = previous.idempotency_key
            return
        row.model_seq_id = row.attempt - 1
        row.idempotency_key = uuid.uuid4().hex

    def choice(self, recovery: Recovery, policy: Policy) -> Choice:
        if recovery.checkpoint_path:
            return Choice("specific", path=recovery.checkpoint_path)
        return Choice(
            policy.checkpoint_strategy,
            path=policy.checkpoint_path,
            metric=policy.best_metric,
            mode=policy.best_mode,
        )

    async def failed_checkpoints(self, recovery: Recovery) -> set[str]:
        """Checkpoints that earlier attempts found impossible to load."""
        async with self.ctx.sessions() as session:
            rows = await session.exec(
                select(Attempt).where(Attempt.recovery_id == recovery.id)
            )
            return {
                a.checkpoint_path
                for a in rows
                if a.checkpoint_path
                and a.error
                and a.error.get("code") in CHECKPOINT_FAILURES
            }

    async def restart(self, recovery: Recovery, attempt: Attempt) -> None:
        """Create the new run on Tinker, resuming any request already sent."""
        assert attempt.checkpoint_path is not None
        assert attempt.model_seq_id is not None
        session_id = recovery.session_id or await self.open_session(recovery)
        request_id = attempt.request_id
        if request_id is None:
            try:
                request_id = await self.ctx.tinker.load_weights(
                    session_id=session_id,
                    model_seq_id=attempt.model_seq_id,
                    path=attempt.checkpoint_path,
                    optimizer=attempt.restore_optimizer,
                    idempotency_key=attempt.idempotency_key,
                )
            except TinkerError as error:
                if error.code != "gone" or self.session_renewed:
                    raise
                await self.renew_session(attempt.attempt)
                return
            async with self.write() as (session, _):
                row = await self.attempt_row(session, attempt.attempt)
                row.request_id = request_id
        remaining = (attempt.deadline or utcnow()) - utcnow()
        try:
            result = await self.ctx.tinker.wait_future(
                request_id, timeout_s=max(remaining.total_seconds(), 0.001)
            )
        except TinkerError as error:
            # The future is awaited until the attempt's deadline: running out
            # of time here is the attempt timing out, whichever timer fired.
            if error.code != "timeout":
                raise
            raise AttemptFailed.timed_out() from error
        new_run_id = self.ctx.tinker.new_run_id(
            session_id, attempt.model_seq_id, result
        )
        async with self.write() as (session, recovery):
            row = await self.attempt_row(session, attempt.attempt)
            row.new_run_id = new_run_id
            row.status = AttemptStatus.verifying
            await self.event(
                session, recovery, "client_created", row.attempt, self.outcome(row)
            )

    async def renew_session(self, number: int) -> None:
        """Forget a session Tinker dropped, so that the restart opens another."""
        # Sessions lapse while no process sends heartbeats, as in a long outage.
        # A load that had taken effect under the same key would have been
        # answered as before, not refused: no run exists for this attempt yet,
        # so new keys in a new session cannot restart it twice. Once per claim,
        # so that a Tinker that refuses every session fails the attempt.
        self.session_renewed = True
        async with self.write() as (session, recovery):
            row = await self.attempt_row(session, number)
            recovery.session_id = None
            recovery.session_key = uuid.uuid4().hex
            row.idempotency_key = uuid.uuid4().hex
        logger.warning(
            "recovery.session_renewed", extra={**self.log, "attempt": number}
        )

    async def open_session(self, recovery: Recovery) -> str:
        """Create the recovery's Tinker session under its stored key."""
        session_id = await self.ctx.tinker.create_session(
            tags=["tinker-recovery"],
            user_metadata={"recovery_id": recovery.id, "run_id": recovery.run_id},
            idempotency_key=recovery.session_key,
        )
        async with self.write() as (session, row):
            row.session_id = session_id
            if await session.get(TinkerSession, session_id) is None:
                session.add(TinkerSession(session_id=session_id, created_at=utcnow()))
        return session_id

    async def request_trainer_restart(
        self, session: AsyncSession, recovery: Recovery, row: Attempt, snap: Snapshot
    ) -> None:
        """Ask the trainer to restart, and sleep the claim until the deadline."""
        assert snap.policy is not None and row.deadline is not None
        data = {
            "checkpoint": row.checkpoint_path,
            "restore_optimizer": row.restore_optimizer,
            "deadline": row.deadline.isoformat(),
        }
        await self.event(session, recovery, "restart_requested", row.attempt, data)
        if snap.policy.on_restart_url:
            payload = {
                "type": "restart_requested",
                "run_id": recovery.run_id,
                "recovery_id": recovery.id,
                "attempt": row.attempt,
                "metadata": snap.run.metadata_,
                **data,
            }
            await enqueue_webhook(
                session,
                "restart_requested",
                snap.policy.on_restart_url,
                payload,
                run_id=recovery.run_id,
                recovery_id=recovery.id,
            )
            on_commit(session, self.ctx.wake_webhooks)
        # The wait is stored, not held: the claim is handed back with a lease
        # that lapses at the deadline, and a report shortens it to now.
        recovery.claim_token = None
        recovery.lease_until = row.deadline

    async def await_trainer(self, attempt: Attempt) -> bool:
        """Move on once the trainer has reported; otherwise wait for it."""
        # Read again under the lock: a report that lands after the snapshot
        # was taken must not be covered by handing the claim back until the
        # deadline.
        async with self.write() as (session, recovery):
            row = await self.attempt_row(session, attempt.attempt)
            if row.new_run_id is not None:
                row.status = AttemptStatus.verifying
                return True
            if row.error is None:
                recovery.claim_token = None
                recovery.lease_until = row.deadline
                return False
            message = str(row.error.get("message"))
        raise AttemptFailed("trainer_error", message, True)

    async def verify(self, attempt: Attempt) -> None:
        """Read the new run back; succeed when it answers and is healthy."""
        assert attempt.new_run_id is not None
        try:
            new_run = await self.ctx.tinker.get_training_run(attempt.new_run_id)
        except TinkerError as error:
            if error.code != "not_found":
                raise
            raise AttemptFailed(
                "new_run_missing",
                f"the new run {attempt.new_run_id} does not exist on Tinker",
                True,
            ) from error
        if new_run.corrupted:
            raise AttemptFailed(
                "new_run_corrupted",
                f"the new run {new_run.training_run_id} is corrupted",
                True,
            )
        await self.complete(attempt)

    async def complete(self, attempt: Attempt) -> None:
        """Record success, hand the watch over to the new run, announce it."""
        now = utcnow()
        async with self.write() as (session, recovery):
            row = await self.attempt_row(session, attempt.attempt)
            outcome = self.outcome(row)
            if row.request_id is None:
                # A trainer restarted the run: only now has the service seen
                # the new run answer on Tinker.
                await self.event(
                    session, recovery, "client_created", row.attempt, outcome
                )
            row.status = AttemptStatus.done
            row.finished_at = now
            self.finish(recovery, RecoveryStatus.succeeded, now)
            recovery.new_run_id = row.new_run_id
            run = await self.release_run(session, recovery, RunStatus.recovered)
            run.successor_run_id = row.new_run_id
            policy = await session.get(Policy, run.policy_id) if run.policy_id else None
            if policy is not None and row.new_run_id is not None:
                await register_run(
                    session,
                    row.new_run_id,
                    policy,
                    dict(run.metadata_),
                    predecessor_run_id=run.run_id,
                    require_enabled=False,
                )
            await self.event(session, recovery, "completed", row.attempt, outcome)
            if policy is not None and policy.on_recovery_url:
                await self.announce(
                    session,
                    policy.on_recovery_url,
                    "recovered",
                    {
                        "run_id": run.run_id,
                        "new_run_id": row.new_run_id,
                        "checkpoint": row.checkpoint_path,
                        "recovery_id": recovery.id,
                        "metadata": run.metadata_,
                    },
                    recovery,
                )
            on_commit(session, self.ctx.wake_monitor)
        RECOVERIES.labels("succeeded").inc()
        logger.info(
            "recovery.completed", extra={**self.log, "new_run_id": attempt.new_run_id}
        )

    async def fail(self, number: int, error: dict[str, Any]) -> None:
        """Record a failed attempt; schedule the next one or give up."""
        now = utcnow()
        async with self.write() as (session, recovery):
            row = await self.attempt_row(session, number)
            if row.status == AttemptStatus.failed:
                return
            row.status = AttemptStatus.failed
            row.error = error
            row.finished_at = now
            run = await session.get(Run, recovery.run_id)
            assert run is not None
            policy = await session.get(Policy, run.policy_id) if run.policy_id else None
            await self.event(session, recovery, "failed", number, {"error": error})
            if policy is not None and self.may_retry(row, error, policy):
                delay = backoff_delay_ms(
                    number,
                    policy.backoff_ms,
                    policy.max_backoff_ms,
                    policy.jitter,
                    self.ctx.rng,
                )
                recovery.status = RecoveryStatus.backoff
                recovery.next_attempt_at = now + timedelta(milliseconds=delay)
                recovery.claim_token = None
                recovery.lease_until = None
                recovery.updated_at = now
                level = logging.WARNING
            else:
                await self.exhaust(session, recovery, run, policy, error, now)
                level = logging.ERROR
                RECOVERIES.labels("exhausted").inc()
        logger.log(
            level,
            "recovery.attempt_failed",
            extra={**self.log, "attempt": number, "code": error["code"]},
        )

    @staticmethod
    def may_retry(row: Attempt, error: dict[str, Any], policy: Policy) -> bool:
        if row.attempt >= policy.max_attempts:
            return False
        if error["retryable"]:
            return True
        falls_back = (
            policy.fallback_to_previous and error["code"] in CHECKPOINT_FAILURES
        )
        return falls_back and bool(row.fallbacks_left)

    async def exhaust(
        self,
        session: AsyncSession,
        recovery: Recovery,
        run: Run,
        policy: Policy | None,
        error: dict[str, Any],
        now: datetime,
    ) -> None:
        self.finish(recovery, RecoveryStatus.exhausted, now)
        recovery.error = error
        await self.release_run(session, recovery, RunStatus.exhausted)
        await self.event(session, recovery, "exhausted", None, {"error": error})
        if policy is not None and policy.on_failure_url:
            await self.announce(
                session,
                policy.on_failure_url,
                "recovery_failed",
                {
                    "run_id": run.run_id,
                    "error": error,
                    "recovery_id": recovery.id,
                    "metadata": run.metadata_,
                },
                recovery,
            )

    async def announce(
        self,
        session: AsyncSession,
        url: str,
        kind: str,
        payload: dict[str, Any],
        recovery: Recovery,
    ) -> None:
        await enqueue_webhook(
            session,
            kind,
            url,
            {"type": kind, **payload},
            run_id=recovery.run_id,
            recovery_id=recovery.id,
        )
        on_commit(session, self.ctx.wake_webhooks)

    @staticmethod
    def finish(recovery: Recovery, status: RecoveryStatus, now: datetime) -> None:
        recovery.status = status
        recovery.finished_at = now
        recovery.updated_at = now
        recovery.next_attempt_at = None
        recovery.claim_token = None
        recovery.lease_until = None

    async def release_run(
        self, session: AsyncSession, recovery: Recovery, status: RunStatus
    ) -> Run:
        """Detach the run from its ended recovery, leaving it in `status`."""
        run = await session.get(Run, recovery.run_id, with_for_update=True)
        assert run is not None
        if run.active_recovery_id == recovery.id:
            run.active_recovery_id = None
        if run.status != RunStatus.stopped or status == RunStatus.recovered:
            run.status = status
        run.next_poll_at = None
        run.updated_at = utcnow()
        return run

    async def attempt_row(self, session: AsyncSession, number: int) -> Attempt:
        row = await session.get(
            Attempt, (self.recovery_id, number), with_for_update=True
        )
        assert row is not None
        return row

    @staticmethod
    def outcome(row: Attempt) -> dict[str, Any]:
        return {
            "new_run_id": row.new_run_id,
            "checkpoint": row.checkpoint_path,
            "restore_optimizer": row.restore_optimizer,
        }


def trainer_reported(attempt: Attempt) -> bool:
    """Whether a trainer's report, not a Tinker request of ours, moves the attempt."""
    reported = attempt.new_run_id is not None or attempt.error is not None
    return reported and attempt.request_id is None


async def current_attempt(session: AsyncSession, recovery: Recovery) -> Attempt | None:
    """The latest attempt of the recovery, if one began."""
    if recovery.attempt_count == 0:
        return None
    return await session.get(Attempt, (recovery.id, recovery.attempt_count))


async def open_attempt(
    session: AsyncSession, recovery: Recovery, policy: Policy
) -> int:
    """Open the recovery's next attempt, with its `started` event; its number."""
    number = recovery.attempt_count + 1
    now = utcnow()
    recovery.attempt_count = number
    recovery.updated_at = now
    recovery.session_key = recovery.session_key or uuid.uuid4().hex
    restore = recovery.restore_optimizer
    session.add(
        Attempt(
            recovery_id=recovery.id,
            attempt=number,
            status=AttemptStatus.selecting,
            restore_optimizer=policy.restore_optimizer if restore is None else restore,
            deadline=now + timedelta(milliseconds=policy.attempt_timeout_ms),
            started_at=now,
        )
    )
    await append_event(
        session,
        "started",
        recovery.run_id,
        recovery_id=recovery.id,
        attempt=number,
        data={"restart_mode": policy.restart_mode},
    )
    log = {"recovery_id": recovery.id, "attempt": number}
    # Said once it is true: a process killed before the commit began nothing.
    on_commit(session, partial(logger.info, "recovery.attempt_started", extra=log))
    return number
