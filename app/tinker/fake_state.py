"""The in-memory world behind the fake Tinker server: runs, checkpoints,
sessions and futures, with the rules Tinker applies to them.

Everything here runs on the server's one event loop and never awaits in the
middle of a change, so no lock is needed.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field

from app.tinker.fake_faults import FakeCall, FaultSpec
from app.tinker.paths import SEGMENT_TYPES, TinkerPath, parse_tinker_path
from app.tinker.types import Checkpoint, CheckpointType, TrainingRun

_SEGMENT_OF_KIND = {kind: segment for segment, kind in SEGMENT_TYPES.items()}


class FakeSettings(BaseModel):
    """How the fake behaves; every field can be changed while it runs."""

    model_config = ConfigDict(extra="forbid")

    future_delay_s: float = Field(default=0.0, ge=0)
    future_pending_polls: int = Field(default=0, ge=0)
    session_ttl_s: float | None = Field(default=None, gt=0)


class SeedCheckpoint(BaseModel):
    """A checkpoint to put on a run."""

    name: str = Field(min_length=1, pattern=r"^[^/\s]+$")
    kind: CheckpointType = "training"
    time: datetime | None = None
    user_metadata: dict[str, str] | None = None
    expires_at: datetime | None = None
    size_bytes: int | None = 1_000_000
    public: bool = False


class SeedRun(BaseModel):
    """A training run to create, checkpoints included."""

    run_id: str | None = Field(default=None, min_length=1, pattern=r"^[^/\s]+$")
    base_model: str = "Qwen/Qwen3-8B"
    model_owner: str = "fake-owner"
    is_lora: bool = True
    lora_rank: int | None = 32
    corrupted: bool = False
    user_metadata: dict[str, str] | None = None
    checkpoints: list[SeedCheckpoint] = []


class RunState(BaseModel):
    """What the fake knows about a run, beyond what Tinker shows of it."""

    run: TrainingRun
    session_id: str | None
    loaded_from: str | None
    optimizer_restored: bool | None


@dataclass
class FakeRun:
    """A training run and its checkpoints, by checkpoint id."""

    run_id: str
    base_model: str
    model_owner: str
    is_lora: bool
    lora_rank: int | None
    user_metadata: dict[str, str] | None
    corrupted: bool = False
    last_request_time: datetime = field(default_factory=lambda: datetime.now(UTC))
    checkpoints: dict[str, Checkpoint] = field(default_factory=dict)
    session_id: str | None = None
    loaded_from: str | None = None
    optimizer_restored: bool | None = None

    def view(self) -> TrainingRun:
        """The run as Tinker's API shows it."""
        return TrainingRun(
            training_run_id=self.run_id,
            base_model=self.base_model,
            model_owner=self.model_owner,
            is_lora=self.is_lora,
            corrupted=self.corrupted,
            lora_rank=self.lora_rank,
            last_request_time=self.last_request_time,
            last_checkpoint=self._newest("training"),
            last_sampler_checkpoint=self._newest("sampler"),
            user_metadata=self.user_metadata,
        )

    def state(self) -> RunState:
        """The run with what the fake recorded about how it was made."""
        return RunState(
            run=self.view(),
            session_id=self.session_id,
            loaded_from=self.loaded_from,
            optimizer_restored=self.optimizer_restored,
        )

    def _newest(self, kind: CheckpointType) -> Checkpoint | None:
        of_kind = [c for c in self.checkpoints.values() if c.checkpoint_type == kind]
        return max(of_kind, key=lambda c: c.time, default=None)


@dataclass
class FakeSession:
    """A client session that training runs are created in."""

    session_id: str
    tags: list[str]
    last_seen: float = field(default_factory=time.monotonic)
    finished: bool = False
    model_seq_ids: set[int] = field(default_factory=set)


@dataclass
class FakeFuture:
    """A pending answer: given once its delay has passed and its polls are used."""

    request_id: str
    answer: dict[str, Any]
    ready_at: float
    pending_polls: int

    def poll(self) -> dict[str, Any]:
        """Answer one retrieve_future call."""
        if self.pending_polls > 0 or time.monotonic() < self.ready_at:
            self.pending_polls = max(self.pending_polls - 1, 0)
            return {
                "type": "try_again",
                "request_id": self.request_id,
                "queue_state": "active",
            }
        return self.answer


@dataclass
class FakeTinker:
    """The whole state of a fake Tinker server."""

    api_key: str | None = None
    settings: FakeSettings = field(default_factory=FakeSettings)
    runs: dict[str, FakeRun] = field(default_factory=dict)
    sessions: dict[str, FakeSession] = field(default_factory=dict)
    futures: dict[str, FakeFuture] = field(default_factory=dict)
    faults: list[FaultSpec] = field(default_factory=list)
    calls: list[FakeCall] = field(default_factory=list)
    # (endpoint, idempotency key) -> (request fingerprint, response body)
    replies: dict[tuple[str, str], tuple[str, dict[str, Any]]] = field(
        default_factory=dict
    )

    def reset(self) -> None:
        """Forget every run, session, future, fault, call and setting."""
        self.settings = FakeSettings()
        for store in (self.runs, self.sessions, self.futures, self.replies):
            store.clear()
        self.faults.clear()
        self.calls.clear()

    def accepts_key(self, key: str | None) -> bool:
        """Whether `key` may call the API: the configured one, or any `tml-` key."""
        if self.api_key is not None:
            return key == self.api_key
        return key is not None and key.startswith("tml-") and len(key) > 4

    # Runs and checkpoints

    def seed_run(self, seed: SeedRun) -> FakeRun:
        """Create (or replace) a run with its checkpoints."""
        run = FakeRun(
            run_id=seed.run_id or f"{uuid.uuid4()}:train:0",
            base_model=seed.base_model,
            model_owner=seed.model_owner,
            is_lora=seed.is_lora,
            lora_rank=seed.lora_rank,
            user_metadata=seed.user_metadata,
            corrupted=seed.corrupted,
        )
        self.runs[run.run_id] = run
        for checkpoint in seed.checkpoints:
            self.add_checkpoint(run.run_id, checkpoint)
        return run

    def run(self, run_id: str) -> FakeRun:
        """The run called `run_id`, or a 404."""
        run = self.runs.get(run_id)
        if run is None:
            raise HTTPException(404, f"training run {run_id} not found")
        return run

    def add_checkpoint(self, run_id: str, seed: SeedCheckpoint) -> Checkpoint:
        """Save a checkpoint on a run; a name taken already is a 409."""
        run = self.run(run_id)
        path = TinkerPath(run_id, _SEGMENT_OF_KIND[seed.kind], seed.name)
        if path.checkpoint_id in run.checkpoints:
            raise HTTPException(409, f"checkpoint {path.checkpoint_id} already exists")

        checkpoint = Checkpoint(
            checkpoint_id=path.checkpoint_id,
            checkpoint_type=seed.kind,
            time=seed.time or _next_time(run),
            tinker_path=str(path),
            size_bytes=seed.size_bytes,
            public=seed.public,
            user_metadata=seed.user_metadata,
            expires_at=seed.expires_at,
        )
        run.checkpoints[checkpoint.checkpoint_id] = checkpoint
        return checkpoint

    def checkpoint(self, tinker_path: str) -> tuple[FakeRun, Checkpoint]:
        """The run and checkpoint a path names; 400 if malformed, else 404."""
        path = _parse_or_400(tinker_path)
        run = self.run(path.run_id)
        checkpoint = run.checkpoints.get(path.checkpoint_id)
        if checkpoint is None:
            raise HTTPException(404, f"checkpoint {tinker_path} not found")
        return run, checkpoint

    def expire_checkpoint(self, tinker_path: str, at: datetime | None) -> Checkpoint:
        """Set when a checkpoint expires; by default a second ago."""
        run, checkpoint = self.checkpoint(tinker_path)
        moment = at or datetime.now(UTC) - timedelta(seconds=1)
        expired = checkpoint.model_copy(update={"expires_at": moment})
        run.checkpoints[checkpoint.checkpoint_id] = expired
        return expired

    def remove_checkpoint(self, tinker_path: str) -> None:
        """Delete a checkpoint, as its owner or its expiry would."""
        run, checkpoint = self.checkpoint(tinker_path)
        del run.checkpoints[checkpoint.checkpoint_id]

    # Sessions

    def create_session(self, tags: list[str]) -> FakeSession:
        """Open a session."""
        session = FakeSession(session_id=str(uuid.uuid4()), tags=tags)
        self.sessions[session.session_id] = session
        return session

    def live_session(self, session_id: str) -> FakeSession:
        """A session that may still be used: 404 if unknown, 410 if gone."""
        session = self.sessions.get(session_id)
        if session is None:
            raise HTTPException(404, f"session {session_id} not found")
        if session.finished or self._lapsed(session):
            raise HTTPException(410, f"session {session_id} is gone")
        session.last_seen = time.monotonic()
        return session

    def finish_session(self, session_id: str) -> None:
        """Mark a session finished; later use of it is a 410."""
        session = self.sessions.get(session_id)
        if session is None:
            raise HTTPException(404, f"session {session_id} not found")
        session.finished = True

    def _lapsed(self, session: FakeSession) -> bool:
        ttl = self.settings.session_ttl_s
        return ttl is not None and time.monotonic() - session.last_seen > ttl

    # Loading weights into a new run

    def load_weights(
        self,
        session_id: str,
        model_seq_id: int,
        path: str,
        optimizer: bool,
        user_metadata: dict[str, str] | None,
    ) -> dict[str, Any]:
        """Start a new run from a checkpoint; answer with the future's handle."""
        session = self.live_session(session_id)
        if model_seq_id in session.model_seq_ids:
            detail = f"model_seq_id {model_seq_id} already used in session {session_id}"
            raise HTTPException(409, detail)
        parsed = _parse_or_400(path)
        if not parsed.is_training:
            detail = f"{path} is not a training checkpoint and cannot be loaded"
            raise HTTPException(400, f"{detail} as training state")

        session.model_seq_ids.add(model_seq_id)
        model_id = f"{session_id}:train:{model_seq_id}"
        answer = self._load(parsed, model_id, optimizer, user_metadata, session_id)
        future = self._new_future(answer)
        return {"request_id": future.request_id, "model_id": model_id}

    def _load(
        self,
        path: TinkerPath,
        model_id: str,
        optimizer: bool,
        user_metadata: dict[str, str] | None,
        session_id: str,
    ) -> dict[str, Any]:
        source = self.runs.get(path.run_id)
        checkpoint = source.checkpoints.get(path.checkpoint_id) if source else None
        if source is None or checkpoint is None:
            return _user_error(f"checkpoint {path} not found")
        if checkpoint.is_expired(datetime.now(UTC)):
            return _user_error(f"checkpoint {path} expired at {checkpoint.expires_at}")

        # The loaded checkpoint stays with its run: a new run has none of its own.
        self.runs[model_id] = FakeRun(
            run_id=model_id,
            base_model=source.base_model,
            model_owner=source.model_owner,
            is_lora=source.is_lora,
            lora_rank=source.lora_rank,
            user_metadata=user_metadata,
            session_id=session_id,
            loaded_from=str(path),
            optimizer_restored=optimizer,
        )
        return {"type": "load_weights", "model_id": model_id, "path": str(path)}

    def _new_future(self, answer: dict[str, Any]) -> FakeFuture:
        future = FakeFuture(
            request_id=str(uuid.uuid4()),
            answer=answer,
            ready_at=time.monotonic() + self.settings.future_delay_s,
            pending_polls=self.settings.future_pending_polls,
        )
        self.futures[future.request_id] = future
        return future

    def retrieve_future(self, request_id: str) -> dict[str, Any]:
        """Answer a poll of a future."""
        future = self.futures.get(request_id)
        if future is None:
            raise HTTPException(404, f"future {request_id} not found")
        return future.poll()

    # Idempotency

    def replay(
        self, endpoint: str, key: str | None, request: Any
    ) -> dict[str, Any] | None:
        """The answer given before to this key, if any (409 for another request)."""
        if key is None or (endpoint, key) not in self.replies:
            return None
        fingerprint, answer = self.replies[(endpoint, key)]
        if fingerprint != _fingerprint(request):
            raise HTTPException(409, "idempotency key reused for a different request")
        return answer

    def remember(
        self, endpoint: str, key: str | None, request: Any, answer: dict[str, Any]
    ) -> dict[str, Any]:
        """Keep `answer` for later requests with the same key; return it."""
        if key is not None:
            self.replies[(endpoint, key)] = (_fingerprint(request), answer)
        return answer


def _user_error(message: str) -> dict[str, Any]:
    return {"error": message, "category": "user"}


def _parse_or_400(tinker_path: str) -> TinkerPath:
    try:
        return parse_tinker_path(tinker_path)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None


def _next_time(run: FakeRun) -> datetime:
    # Checkpoints seeded together still get distinct, increasing times.
    now = datetime.now(UTC)
    newest = max((c.time for c in run.checkpoints.values()), default=None)
    return now if newest is None else max(now, newest + timedelta(milliseconds=1))


def _fingerprint(request: Any) -> str:
    return json.dumps(request, sort_keys=True, default=str)
