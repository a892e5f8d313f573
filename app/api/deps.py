"""Dependencies the routes share, as `Annotated` aliases."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel.ext.asyncio.session import AsyncSession

from app.config import Settings
from app.errors import RunNotFound, Unauthorized
from app.runtime import Runtime
from app.storage.db import transaction
from app.storage.models import Run


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_settings(runtime: RuntimeDep) -> Settings:
    return runtime.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_session(
    runtime: RuntimeDep, request: Request
) -> AsyncIterator[AsyncSession]:
    """One transaction per request: committed when the route returns."""
    reads_only = request.method in ("GET", "HEAD")
    sessions = runtime.read_sessions if reads_only else runtime.sessions
    async with transaction(sessions) as session:
        yield session


# Function scope: the transaction commits before the response is sent, so a
# client never reads an answer about a write that is not visible yet.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]

bearer = HTTPBearer(auto_error=False, description="One of RECOVERY_API_TOKENS")


def require_token(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """Let the request through when auth is off or its bearer token is known."""
    if not settings.api_tokens:
        return
    given = credentials.credentials if credentials else ""
    known = any(
        hmac.compare_digest(given.encode(), token.encode())
        for token in settings.token_values
    )
    if not known:
        raise Unauthorized("a valid bearer token is required")


# Ids are stored as text, which cannot hold NUL characters on Postgres.
NO_NUL = r"^[^\x00]+$"

RunIdPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=512,
        pattern=NO_NUL,
        description="The Tinker training_run_id, colons included",
    ),
]
PolicyIdPath = Annotated[str, Path(max_length=36, pattern=NO_NUL)]
RecoveryIdPath = Annotated[str, Path(max_length=36, pattern=NO_NUL)]


async def get_run(run_id: RunIdPath, session: SessionDep) -> Run:
    run = await session.get(Run, run_id)
    if run is None:
        raise RunNotFound(f"run {run_id!r} is not registered")
    return run


RunDep = Annotated[Run, Depends(get_run)]
