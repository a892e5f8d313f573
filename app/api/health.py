"""Liveness, readiness and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import text

from app.api.deps import RuntimeDep, require_token
from app.api.responses import errors
from app.errors import Unauthorized

router = APIRouter(tags=["operations"])


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    database: bool
    workers: bool


@router.get("/healthz")
async def healthz() -> Health:
    """Answer while the process runs."""
    return Health(status="ok")


@router.get(
    "/readyz",
    responses={503: {"model": Readiness, "description": "Not ready"}},
)
async def readyz(runtime: RuntimeDep, response: Response) -> Readiness:
    """Answer 200 when the database is reachable and the workers run."""
    try:
        async with runtime.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        database = True
    except Exception:
        database = False
    workers = runtime.workers_running()
    body = Readiness(
        status="ready" if database and workers else "not_ready",
        database=database,
        workers=workers,
    )
    if body.status != "ready":
        response.status_code = 503
    return body


@router.get(
    "/metrics",
    dependencies=[Depends(require_token)],
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}, "description": "Prometheus metrics"},
        **errors(Unauthorized),
    },
)
async def metrics() -> Response:
    """Prometheus metrics in the text format."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
