"""A fake Tinker server, in memory, for tests, examples and offline demos.

It speaks the wire protocol of `/api/v1` closely enough for the official SDK
(0.38) to run against it: the startup calls (`client/config`, which keeps the
SDK on plain httpx and API keys; `client/dynamic_config`, a 404 as on servers
that predate it; `telemetry`), sessions and their heartbeats, `load_weights`
and its future, `get_info`, `weights_info`, and reading training runs and
their checkpoints. Run ids carry colons (`<session>:train:<n>`).

Choices where the real service leaves room:

- Auth: with an `api_key`, only that key passes; without, any `tml-...` key
  does. Anything else is a 401.
- `load_weights` checks what it can see in the request at once: a path that
  is malformed, or not `weights/` (a sampler checkpoint is no training
  state), is a 400; an unknown session a 404, a finished or lapsed one a 410;
  a `model_seq_id` used before in the session a 409. What needs the stored
  checkpoint fails through the future with category `user`: a run or
  checkpoint that does not exist, or one past its `expires_at`.
- A successful load creates the run `<session_id>:train:<model_seq_id>` at
  once, with the source run's base model, owner and LoRA settings, not
  corrupted, and without checkpoints: the loaded checkpoint stays with the
  run that saved it, as on Tinker. The fake remembers the path and whether
  the optimizer was restored (`GET /_fake/runs/{run_id}`).
- `create_session` and `load_weights` with an `X-Idempotency-Key` seen before
  answer as they did the first time and create nothing; the same key on a
  different request is a 409.
- A future answers `try_again` until `future_delay_s` has passed and it has
  been polled `future_pending_polls` times; then its result, for good.
- Sessions never lapse unless `session_ttl_s` is set; any use of a session
  counts as a sign of life.
- Checkpoints are listed oldest first; expired ones stay listed.

Control endpoints, under `/_fake/` and without auth (see `FakeTinkerControl`):

    POST   /_fake/reset                          forget everything
    GET    /_fake/settings                       FakeSettings
    PATCH  /_fake/settings                       change some of them
    POST   /_fake/runs                           seed a run (SeedRun)
    GET    /_fake/runs/{run_id}                  the run and how it was made
    POST   /_fake/runs/{run_id}/checkpoints      add one (SeedCheckpoint)
    POST   /_fake/runs/{run_id}/corrupt          mark it corrupted
    POST   /_fake/runs/{run_id}/heal             mark it healthy
    POST   /_fake/checkpoints/expire             {tinker_path, expires_at?}
    POST   /_fake/checkpoints/remove             {tinker_path}
    POST   /_fake/faults                         inject one (FaultSpec)
    GET    /_fake/faults                         those not used up yet
    DELETE /_fake/faults                         clear them
    GET    /_fake/calls?endpoint=&method=        API calls received (FakeCall)
    DELETE /_fake/calls                          clear the log
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.tinker.fake_faults import FakeCall, FaultsAndCalls, FaultSpec, play_faults
from app.tinker.fake_state import (
    FakeSettings,
    FakeTinker,
    RunState,
    SeedCheckpoint,
    SeedRun,
)
from app.tinker.types import Checkpoint, TrainingRun


def create_fake_tinker_app(
    api_key: str | None = None, *, settings: FakeSettings | None = None
) -> FastAPI:
    """Build a fresh fake Tinker server with an empty world."""
    world = FakeTinker(api_key=api_key, settings=settings or FakeSettings())
    app = FastAPI(title="Fake Tinker", docs_url=None, redoc_url=None)
    app.state.world = world
    checks = [Depends(_api_checks)]
    app.include_router(api_router, prefix="/api/v1", dependencies=checks)
    app.include_router(control_router, prefix="/_fake")
    app.add_middleware(FaultsAndCalls, faults=world.faults, calls=world.calls)
    return app


def run_fake_tinker(
    host: str = "127.0.0.1", port: int = 8000, *, api_key: str | None = None
) -> None:
    """Serve a fake Tinker until interrupted (`tinker-recovery fake-tinker`)."""
    app = create_fake_tinker_app(api_key)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)


# Handlers and their dependencies are coroutines that only touch memory: a
# plain `def` would send each of them through the thread pool, which costs
# more than all they do. Fewer dependencies also make a cheaper call.


async def _world(request: Request) -> FakeTinker:
    world: FakeTinker = request.app.state.world
    return world


World = Annotated[FakeTinker, Depends(_world)]


async def _api_checks(request: Request) -> None:
    """Of every API call: play a matching fault first, then check the key."""
    await play_faults(request)
    world: FakeTinker = request.app.state.world
    if not world.accepts_key(request.headers.get("x-api-key")):
        raise HTTPException(401, "invalid or missing API key")


# The API, as the SDK calls it

api_router = APIRouter()
IdempotencyKey = Annotated[str | None, Header(alias="X-Idempotency-Key")]


# Reads of training runs come first: routes are tried in order, and the
# service reads runs far more often than it calls anything else.


@api_router.get("/training_runs")
async def list_training_runs(
    world: World,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
    access_scope: Literal["owned", "accessible"] = "owned",
) -> dict[str, Any]:
    """List training runs, oldest first, a page at a time."""
    runs = list(world.runs.values())
    page = [run.view() for run in runs[offset : offset + limit]]
    cursor = {"offset": offset, "limit": limit, "total_count": len(runs)}
    return {"training_runs": page, "cursor": cursor}


@api_router.get("/training_runs/{run_id}")
async def get_training_run(
    run_id: str,
    world: World,
    access_scope: Literal["owned", "accessible"] = "owned",
) -> TrainingRun:
    """Read a training run."""
    return world.run(run_id).view()


@api_router.get("/training_runs/{run_id}/checkpoints")
async def list_checkpoints(run_id: str, world: World) -> dict[str, Any]:
    """List a run's checkpoints, oldest first."""
    checkpoints = sorted(world.run(run_id).checkpoints.values(), key=lambda c: c.time)
    return {"checkpoints": checkpoints, "cursor": None}


class CreateSessionBody(BaseModel):
    """What create_session reads."""

    tags: list[str] = []
    user_metadata: dict[str, Any] | None = None
    sdk_version: str | None = None


class SessionBody(BaseModel):
    """A request about one session."""

    session_id: str


class LoadWeightsBody(BaseModel):
    """What load_weights reads; legacy model_id addressing is not offered."""

    session_id: str | None = None
    model_seq_id: int | None = Field(default=None, ge=0)
    path: str
    optimizer: bool
    user_metadata: dict[str, Any] | None = None


class RetrieveFutureBody(BaseModel):
    """A poll of one future."""

    request_id: str
    allow_metadata_only: bool = False


class ModelBody(BaseModel):
    """A request about one model (training run)."""

    model_config = ConfigDict(protected_namespaces=())
    model_id: str


class TinkerPathBody(BaseModel):
    """A request about one checkpoint."""

    tinker_path: str


@api_router.post("/client/config")
async def client_config() -> dict[str, Any]:
    """Server flags: plain httpx, API keys rather than a token exchange."""
    return {"use_pyqwest_transport": False, "pjwt_auth_enabled": False}


@api_router.post("/client/dynamic_config")
async def client_dynamic_config() -> JSONResponse:
    """Not offered, as on servers that predate it: the SDK keeps its defaults."""
    return JSONResponse({"detail": "Not Found"}, status_code=404)


@api_router.post("/telemetry")
async def telemetry() -> dict[str, str]:
    """Accept and drop SDK telemetry."""
    return {"status": "accepted"}


@api_router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Say the fake is up."""
    return {"status": "ok"}


@api_router.post("/create_session")
async def create_session(
    body: CreateSessionBody, world: World, key: IdempotencyKey = None
) -> Any:
    """Open a session."""
    request = body.model_dump()
    if (earlier := world.replay("create_session", key, request)) is not None:
        return earlier
    session = world.create_session(body.tags)
    answer = {"type": "create_session", "session_id": session.session_id}
    return world.remember("create_session", key, request, answer)


@api_router.post("/session_heartbeat")
async def session_heartbeat(body: SessionBody, world: World) -> dict[str, str]:
    """Keep a session alive; 410 once it is gone."""
    world.live_session(body.session_id)
    return {"type": "session_heartbeat"}


@api_router.post("/sessions/{session_id}/finish")
async def finish_session(session_id: str, world: World) -> dict[str, str]:
    """End a session."""
    world.finish_session(session_id)
    return {}


@api_router.post("/load_weights")
async def load_weights(
    body: LoadWeightsBody, world: World, key: IdempotencyKey = None
) -> Any:
    """Create a training run from a checkpoint; answer with a future."""
    if body.session_id is None or body.model_seq_id is None:
        raise HTTPException(400, "the fake supports session_id + model_seq_id only")
    request = body.model_dump()
    if (earlier := world.replay("load_weights", key, request)) is not None:
        return earlier
    metadata = _as_strings(body.user_metadata)
    answer = world.load_weights(
        body.session_id, body.model_seq_id, body.path, body.optimizer, metadata
    )
    return world.remember("load_weights", key, request, answer)


@api_router.post("/retrieve_future")
async def retrieve_future(body: RetrieveFutureBody, world: World) -> dict[str, Any]:
    """Answer a poll of a future: try_again, a failure, or the result."""
    return world.retrieve_future(body.request_id)


@api_router.post("/get_info")
async def get_info(body: ModelBody, world: World) -> dict[str, Any]:
    """Describe the model of a training run."""
    run = world.run(body.model_id)
    return {
        "type": "get_info",
        "model_id": run.run_id,
        "model_data": {"arch": "fake", "model_name": run.base_model},
        "is_lora": run.is_lora,
        "lora_rank": run.lora_rank,
        "model_name": run.base_model,
    }


@api_router.post("/weights_info")
async def weights_info(body: TinkerPathBody, world: World) -> dict[str, Any]:
    """Describe what a checkpoint needs to be loaded."""
    run, _ = world.checkpoint(body.tinker_path)
    return {
        "base_model": run.base_model,
        "is_lora": run.is_lora,
        "lora_rank": run.lora_rank,
    }


def _as_strings(metadata: dict[str, Any] | None) -> dict[str, str] | None:
    if metadata is None:
        return None
    return {name: str(value) for name, value in metadata.items()}


# Control of the fake, for tests

control_router = APIRouter()


class ExpireBody(BaseModel):
    """When a checkpoint is to expire."""

    tinker_path: str
    expires_at: datetime | None = None


@control_router.post("/reset", status_code=204)
async def reset(world: World) -> None:
    """Forget every run, session, future, fault, call and setting."""
    world.reset()


@control_router.get("/settings")
async def get_settings(world: World) -> FakeSettings:
    """Show how the fake behaves."""
    return world.settings


@control_router.patch("/settings")
async def change_settings(changes: dict[str, Any], world: World) -> FakeSettings:
    """Change some settings; the others stay."""
    try:
        merged = FakeSettings.model_validate({**world.settings.model_dump(), **changes})
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False)
        raise HTTPException(422, errors) from None
    world.settings = merged
    return merged


@control_router.post("/runs", status_code=201)
async def seed_run(seed: SeedRun, world: World) -> TrainingRun:
    """Create (or replace) a run with its checkpoints."""
    return world.seed_run(seed).view()


@control_router.get("/runs/{run_id}")
async def run_state(run_id: str, world: World) -> RunState:
    """Show a run with what the fake recorded about how it was made."""
    return world.run(run_id).state()


@control_router.post("/runs/{run_id}/checkpoints", status_code=201)
async def add_checkpoint(run_id: str, seed: SeedCheckpoint, world: World) -> Checkpoint:
    """Save a checkpoint on a run; 409 if its name is taken."""
    return world.add_checkpoint(run_id, seed)


@control_router.post("/runs/{run_id}/corrupt")
async def corrupt_run(run_id: str, world: World) -> TrainingRun:
    """Mark a run corrupted, as Tinker does when it breaks."""
    run = world.run(run_id)
    run.corrupted = True
    return run.view()


@control_router.post("/runs/{run_id}/heal")
async def heal_run(run_id: str, world: World) -> TrainingRun:
    """Mark a run healthy again."""
    run = world.run(run_id)
    run.corrupted = False
    return run.view()


@control_router.post("/checkpoints/expire")
async def expire_checkpoint(body: ExpireBody, world: World) -> Checkpoint:
    """Make a checkpoint expire (a second ago unless `expires_at` says)."""
    return world.expire_checkpoint(body.tinker_path, body.expires_at)


@control_router.post("/checkpoints/remove", status_code=204)
async def remove_checkpoint(body: TinkerPathBody, world: World) -> None:
    """Delete a checkpoint."""
    world.remove_checkpoint(body.tinker_path)


@control_router.post("/faults", status_code=201)
async def inject_fault(fault: FaultSpec, world: World) -> FaultSpec:
    """Play a fault on the next `count` matching API calls."""
    world.faults.append(fault)
    return fault


@control_router.get("/faults")
async def list_faults(world: World) -> list[FaultSpec]:
    """Show the faults not used up yet."""
    return world.faults


@control_router.delete("/faults", status_code=204)
async def clear_faults(world: World) -> None:
    """Drop every fault."""
    world.faults.clear()


@control_router.get("/calls")
async def list_calls(
    world: World, endpoint: str | None = None, method: str | None = None
) -> list[FakeCall]:
    """Show the API calls received, oldest first."""
    return [
        call
        for call in world.calls
        if (endpoint is None or call.endpoint == endpoint)
        and (method is None or call.method == method.upper())
    ]


@control_router.delete("/calls", status_code=204)
async def clear_calls(world: World) -> None:
    """Forget the calls received."""
    world.calls.clear()
