"""The monitor: polls due runs on Tinker and writes what it saw in batches."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import (
    DateTime,
    String,
    TextClause,
    Update,
    bindparam,
    column,
    func,
    or_,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.engine.attempts import open_attempt
from app.engine.commands import queue_recovery
from app.engine.context import EngineContext
from app.engine.workers import WorkerPool
from app.errors import AlreadyPending
from app.events.store import append_event
from app.metrics import POLL_BATCH, POLL_LATENESS, POLLS
from app.storage.claims import DuePoll, claim_due_polls, is_postgres, next_poll_due
from app.storage.db import on_commit, transaction
from app.storage.models import Policy, Recovery, RecoveryStatus, Run, RunStatus
from app.storage.types import utcnow
from app.tinker.errors import TinkerError
from app.tinker.types import TrainingRun

logger = logging.getLogger(__name__)

FLUSH_AFTER_S = 0.02
FLUSH_AT = 500
RECORD_TIMEOUT_S = 30.0

runs_table = Run.__table__  # type: ignore[attr-defined]


def batch_writer(*, saw_run: bool) -> Update:
    """Postgres: every poll result of a batch in one statement, from arrays.

    An executemany is one prepared statement run once per row, and Postgres
    may keep a generic plan for it that was chosen while the table was small:
    one that finds the row through the status index and so reads every
    watched run for each row written. Joined from arrays, a batch costs at
    most one pass over the table, whatever the plan.
    """
    polls = (
        func.unnest(
            bindparam("b_run_ids", type_=ARRAY(String)),
            bindparam("b_ats", type_=ARRAY(DateTime(timezone=True))),
            bindparam("b_errors", type_=ARRAY(JSONB)),
            bindparam("b_checkpoints", type_=ARRAY(JSONB)),
        )
        .table_valued(
            column("run_id", String),
            column("at", DateTime(timezone=True)),
            column("error", JSONB),
            column("checkpoint", JSONB),
        )
        .render_derived(name="polls")
    )
    values: dict[str, Any] = {
        "last_polled_at": polls.c.at,
        "updated_at": polls.c.at,
        "last_error": polls.c.error,
    }
    if saw_run:
        values["last_checkpoint"] = polls.c.checkpoint
    statement: Update = (
        runs_table.update()
        .where(
            runs_table.c.run_id == polls.c.run_id,
            runs_table.c.status == RunStatus.monitoring.value,
            or_(
                runs_table.c.last_polled_at.is_(None),
                runs_table.c.last_polled_at <= polls.c.at,
            ),
        )
        .values(**values)
    )
    return statement


def sqlite_batch_writer(*, saw_run: bool) -> TextClause:
    """SQLite: every poll result of a batch in one statement, from a JSON array.

    Row by row, the driver's thread gives the interpreter lock back and takes
    it again around every row, and while the event loop is busy each taking
    can wait a whole switch interval: one statement steps through the whole
    batch at once. The values are encoded as the columns' own types encode
    them, so what is stored is what a row-by-row write would store.
    """
    checkpoint = ", last_checkpoint = polls.checkpoint" if saw_run else ""
    return text(
        "UPDATE runs SET last_polled_at = polls.at, updated_at = polls.at, "
        f"last_error = polls.error{checkpoint} "
        "FROM (SELECT json_extract(value, '$[0]') AS run_id, "
        "json_extract(value, '$[1]') AS at, "
        "json_extract(value, '$[2]') AS error, "
        "json_extract(value, '$[3]') AS checkpoint "
        "FROM json_each(:polls)) AS polls "
        # The unary plus keeps the planner off the status index: through it,
        # SQLite would visit every watched run and scan the whole array for
        # each; without it, each row of the array finds its run by key.
        "WHERE runs.run_id = polls.run_id AND +runs.status = :monitoring "
        # Polls of one run overlap when Tinker is slower than the interval:
        # a poll that started before the stored one must not undo it.
        "AND (runs.last_polled_at IS NULL OR runs.last_polled_at <= polls.at)"
    ).bindparams(monitoring=RunStatus.monitoring.value)


RECORD_POLLS = batch_writer(saw_run=True)
RECORD_POLL_ERRORS = batch_writer(saw_run=False)
SQLITE_RECORD_POLLS = sqlite_batch_writer(saw_run=True)
SQLITE_RECORD_POLL_ERRORS = sqlite_batch_writer(saw_run=False)


def newest_per_run(params: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run: of two polls of a run in a batch, the later one.

    A statement joined from a list applies one match per row, where a
    row-by-row write would have applied both in turn; the later one wins.
    """
    newest: dict[str, dict[str, Any]] = {}
    for row in params:
        kept = newest.get(row["b_run_id"])
        if kept is None or kept["b_at"] <= row["b_at"]:
            newest[row["b_run_id"]] = row
    return list(newest.values())


def sqlite_encoded(session: AsyncSession, rows: list[dict[str, Any]]) -> str:
    """The rows as one JSON array, each value encoded as its column stores it."""
    dialect = session.get_bind().dialect
    columns = runs_table.c

    def encoder(column: Any) -> Any:
        encode = column.type.dialect_impl(dialect).bind_processor(dialect)
        return encode or (lambda value: value)

    at, error, checkpoint = (
        encoder(columns.last_polled_at),
        encoder(columns.last_error),
        encoder(columns.last_checkpoint),
    )
    return json.dumps(
        [
            [
                row["b_run_id"],
                at(row["b_at"]),
                error(row["b_error"]),
                checkpoint(row["b_checkpoint"]),
            ]
            for row in rows
        ]
    )


async def write_polls(
    session: AsyncSession, params: list[dict[str, Any]], *, saw_run: bool
) -> None:
    """Store the outcome of polls that saw their run (or failed to)."""
    if not params:
        return
    rows = newest_per_run(params)
    if not is_postgres(session):
        statement = SQLITE_RECORD_POLLS if saw_run else SQLITE_RECORD_POLL_ERRORS
        connection = await session.connection()
        await connection.execute(statement, {"polls": sqlite_encoded(session, rows)})
        return
    arrays = {
        "b_run_ids": [row["b_run_id"] for row in rows],
        "b_ats": [row["b_at"] for row in rows],
        "b_errors": [row["b_error"] for row in rows],
        "b_checkpoints": [row["b_checkpoint"] for row in rows],
    }
    await session.exec(RECORD_POLLS if saw_run else RECORD_POLL_ERRORS, params=arrays)


@dataclass(slots=True)
class PollResult:
    """What one poll saw: the run, or the error that kept it from seeing."""

    run_id: str
    at: datetime
    run: TrainingRun | None = None
    error: dict[str, Any] | None = None

    @property
    def corrupted(self) -> bool:
        return self.run is not None and self.run.corrupted

    def checkpoint(self) -> dict[str, Any] | None:
        if self.run is None or self.run.last_checkpoint is None:
            return None
        return self.run.last_checkpoint.model_dump(mode="json")

    def checkpoint_path(self) -> str | None:
        if self.run is None or self.run.last_checkpoint is None:
            return None
        return self.run.last_checkpoint.tinker_path


@dataclass
class Handoffs:
    """Recoveries claimed for the local worker pool as they are detected.

    A corrupted run whose recovery finds a free worker slot has it claimed
    and its first attempt opened in the transaction that records the poll,
    and is driven as soon as that commits: the detection neither waits for
    the pool to look for work nor takes further transactions to start.
    """

    pool: WorkerPool | None
    claimed: list[tuple[str, str]] = field(default_factory=list)

    async def claim(
        self, session: AsyncSession, recovery: Recovery, policy: Policy
    ) -> None:
        token = self.pool.reserve() if self.pool is not None else None
        if token is None:
            return
        assert self.pool is not None
        self.claimed.append((recovery.id, token))
        now = utcnow()
        recovery.status = RecoveryStatus.running
        recovery.claim_token = token
        recovery.lease_until = now + self.pool.lease
        recovery.updated_at = now
        await open_attempt(session, recovery, policy)

    def settle(self, *, committed: bool) -> None:
        """Drive what was claimed, or give the slots back if nothing was."""
        if self.pool is None:
            return
        for recovery_id, token in self.claimed:
            if committed:
                self.pool.adopt(recovery_id, token)
            else:
                self.pool.unreserve()
        self.claimed.clear()


class Monitor:
    """Claims due runs, polls them concurrently, and records the results."""

    def __init__(self, ctx: EngineContext, workers: WorkerPool | None = None) -> None:
        self.ctx = ctx
        self.workers = workers
        settings = ctx.settings
        self.batch_size = settings.poll_batch_size
        self.idle_s = settings.monitor_idle_ms / 1000
        self.limit = asyncio.Semaphore(settings.poll_concurrency)
        # Polls in flight, by run: a run whose last poll has not answered yet
        # (Tinker slower than the interval) is not polled again meanwhile.
        self.inflight: dict[str, asyncio.Task[None]] = {}
        self.results: list[PollResult] = []
        self.stopping = asyncio.Event()
        self.woken = asyncio.Event()
        self.results_ready = asyncio.Event()
        self.urgent = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def wake(self) -> None:
        """Look for due runs now: one was just registered."""
        self.woken.set()

    @property
    def running(self) -> bool:
        return bool(self.tasks) and not any(task.done() for task in self.tasks)

    async def start(self) -> None:
        self.tasks = [
            asyncio.create_task(self.run(), name="monitor"),
            asyncio.create_task(self.write_results(), name="monitor-writer"),
        ]

    async def stop(self) -> None:
        """Stop claiming, let polls in flight end, and write their results."""
        self.stopping.set()
        self.woken.set()
        await self.tasks[0]
        if self.inflight:
            await asyncio.wait(self.inflight.values(), timeout=5)
        for task in self.inflight.values():
            task.cancel()
        self.results_ready.set()
        await self.tasks[1]

    async def run(self) -> None:
        while not self.stopping.is_set():
            free = self.batch_size - len(self.inflight)
            claimed: list[DuePoll] = []
            if free > 0:
                try:
                    claimed = await self.claim(free)
                except Exception:
                    logger.exception("monitor.claim_failed")
            if claimed and len(claimed) == free:
                await self.wait(self.idle_s)
            elif not claimed:
                await self.wait(await self.next_due_in(free))

    async def wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.woken.wait()
        self.woken.clear()

    async def next_due_in(self, free: int) -> float:
        if free <= 0:
            return self.idle_s
        try:
            async with self.ctx.sessions() as session:
                when = await next_poll_due(session)
        except Exception:
            logger.exception("monitor.next_due_failed")
            return self.idle_s
        if when is None:
            return self.idle_s
        return min(self.idle_s, max((when - utcnow()).total_seconds(), 0.0))

    async def claim(self, limit: int) -> list[DuePoll]:
        async with transaction(self.ctx.sessions) as session:
            claimed = await claim_due_polls(session, utcnow(), limit)
        for due in claimed:
            if due.run_id in self.inflight:
                continue
            task = asyncio.create_task(self.poll(due))
            self.inflight[due.run_id] = task
            task.add_done_callback(partial(self.poll_done, due.run_id))
        return claimed

    def poll_done(self, run_id: str, _task: asyncio.Task[None]) -> None:
        self.inflight.pop(run_id, None)
        # Claim again once half of a batch has finished, not after every poll.
        if len(self.inflight) <= self.batch_size // 2:
            self.woken.set()

    async def poll(self, due: DuePoll) -> None:
        """Read one run on Tinker; never raises."""
        async with self.limit:
            started = utcnow()
            POLL_LATENESS.observe(max((started - due.due_at).total_seconds(), 0.0))
            result = PollResult(due.run_id, started)
            try:
                result.run = await self.ctx.tinker.get_training_run(due.run_id)
            except TinkerError as error:
                result.error = error.to_dict()
            except Exception as error:
                logger.exception("monitor.poll_crashed", extra={"run_id": due.run_id})
                result.error = {
                    "code": "poll_failed",
                    "message": type(error).__name__,
                    "retryable": True,
                }
        self.results.append(result)
        self.results_ready.set()
        if result.corrupted:
            self.urgent.set()

    async def write_results(self) -> None:
        """Write poll results in batches: one transaction for many polls."""
        while not (self.stopping.is_set() and not self.inflight and not self.results):
            await self.results_ready.wait()
            if not self.urgent.is_set() and len(self.results) < FLUSH_AT:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(FLUSH_AFTER_S):
                        await self.urgent.wait()
            self.results_ready.clear()
            self.urgent.clear()
            batch, self.results = self.results, []
            if batch:
                await self.record(batch)

    async def write_batch(self, batch: list[PollResult]) -> None:
        handoffs = Handoffs(self.workers)
        committed = False
        try:
            async with transaction(self.ctx.sessions) as session:
                await record_polls(session, batch, handoffs)
                if any(result.corrupted for result in batch):
                    on_commit(session, self.ctx.wake_workers)
            committed = True
        finally:
            # A commit that failed or was cut short may still have landed:
            # those claims then lapse with their leases and are taken again.
            handoffs.settle(committed=committed)

    async def record(self, batch: list[PollResult]) -> None:
        try:
            # A write that hangs must not stop every later poll from being
            # recorded: past the limit it is abandoned, and its runs are polled
            # again at their next interval like after any failed write.
            async with asyncio.timeout(RECORD_TIMEOUT_S):
                await self.write_batch(batch)
        except Exception:
            logger.exception("monitor.record_failed", extra={"polls": len(batch)})
            return
        POLL_BATCH.observe(len(batch))
        for result in batch:
            outcome = "error" if result.error else "ok"
            POLLS.labels("corrupted" if result.corrupted else outcome).inc()


async def record_polls(
    session: AsyncSession, batch: list[PollResult], handoffs: Handoffs | None = None
) -> None:
    """Store a batch of poll results; corrupted runs get a recovery.

    With `handoffs`, a recovery is claimed for the local pool while it has
    free slots; otherwise it is queued for whichever worker claims it first.
    """
    # Every run row is locked, in one order, before the first event takes the
    # event lock: no transaction then holds that lock while it waits for a
    # run that another holds while waiting for the lock (a deadlock).
    batch = sorted(batch, key=lambda result: result.run_id)
    if any(result.error is not None or result.corrupted for result in batch):
        await lock_runs(session, [result.run_id for result in batch])
    params = [
        {
            "b_run_id": result.run_id,
            "b_at": result.at,
            "b_checkpoint": result.checkpoint(),
            "b_error": result.error,
        }
        for result in batch
        if not result.corrupted
    ]
    seen = [p for p in params if p["b_error"] is None]
    failed = [p for p in params if p["b_error"] is not None]
    await write_polls(session, seen, saw_run=True)
    await write_polls(session, failed, saw_run=False)
    for result in batch:
        if result.error is not None:
            await append_event(
                session, "poll_error", result.run_id, data={"error": result.error}
            )
            logger.warning(
                "monitor.poll_failed",
                extra={"run_id": result.run_id, "code": result.error["code"]},
            )
        elif result.corrupted:
            await detect(session, result, handoffs)


async def lock_runs(session: AsyncSession, run_ids: list[str]) -> None:
    """Lock the rows of `run_ids` for the transaction, in run id order."""
    await session.exec(
        select(Run.run_id)
        .where(col(Run.run_id).in_(run_ids))
        .order_by(col(Run.run_id))
        .with_for_update()
    )


async def detect(
    session: AsyncSession, result: PollResult, handoffs: Handoffs | None = None
) -> None:
    """Queue a recovery of a corrupted run, with its `detected` event."""
    run = await session.get(Run, result.run_id, with_for_update=True)
    if run is None or run.status != RunStatus.monitoring:
        return
    run.last_polled_at = result.at
    run.last_checkpoint = result.checkpoint()
    policy = await session.get(Policy, run.policy_id) if run.policy_id else None
    if policy is None or not policy.enabled:
        run.last_error = {
            "code": "recovery_disabled",
            "message": "the run is corrupted but its policy is disabled",
            "retryable": False,
        }
        return
    run.last_error = None
    try:
        async with session.begin_nested():
            recovery = await queue_recovery(
                session, run, "detected", detected_checkpoint=result.checkpoint_path()
            )
    except (IntegrityError, AlreadyPending):
        # Another replica queued one first; the database keeps only one.
        await session.refresh(run)
        return
    log = {"run_id": run.run_id}
    on_commit(session, partial(logger.info, "monitor.corruption_detected", extra=log))
    if handoffs is not None:
        await handoffs.claim(session, recovery, policy)
