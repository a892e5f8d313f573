"""The app factory and its lifespan: builds, starts and stops every part."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import Depends, FastAPI

from app import __version__
from app.api import events, handlers, health, policies, reports, runs
from app.api.deps import require_token
from app.api.responses import errors
from app.config import Settings
from app.engine.assembly import start_background
from app.errors import Unauthorized, Unavailable
from app.runtime import Runtime
from app.storage.db import create_engine, read_session_factory, session_factory
from app.storage.migrate import upgrade_async

logger = logging.getLogger(__name__)

DESCRIPTION = """
Watches Tinker training runs and, when Tinker marks one `corrupted`, restarts it
from a checkpoint under the run's policy, retrying with capped exponential
backoff. Every step is stored and published as an event (`GET /events`,
`GET /events/stream`).
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service; nothing starts until the lifespan runs."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            app.state.runtime = await start_runtime(settings, stack)
            logger.info("service.started", extra={"host": settings.host})
            yield
            logger.info("service.stopping")

    app = FastAPI(
        title="tinker-recovery",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    handlers.install(app)
    unauthorized = errors(Unauthorized, Unavailable)
    app.include_router(health.router)
    app.include_router(policies.router, responses=unauthorized)
    app.include_router(runs.router, responses=unauthorized)
    app.include_router(reports.router, responses=unauthorized)
    app.include_router(
        events.router, dependencies=[Depends(require_token)], responses=unauthorized
    )
    return app


async def start_runtime(settings: Settings, stack: AsyncExitStack) -> Runtime:
    """Create the engine and the background parts; `stack` stops them in order."""
    if settings.migrate_on_start:
        await upgrade_async(settings.database_url)
    engine = create_engine(settings.database_url)
    stack.push_async_callback(engine.dispose)
    runtime = Runtime(
        settings=settings,
        engine=engine,
        sessions=session_factory(engine),
        read_sessions=read_session_factory(engine),
    )
    await start_background(runtime, stack)
    return runtime


def build() -> FastAPI:
    """The ASGI app `app.main:app`, configured from the environment."""
    return create_app()


app = build()
