"""A minimal service around the events router, wired the way the app factory is.

Run it as a process of its own (the shutdown test does):
`python -m tests.events.service DATABASE_URL PORT`.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from app.api import events
from app.config import Settings
from app.errors import ServiceError
from app.events.broker import EventBroker
from app.events.store import set_notifier
from app.storage.db import create_engine, read_session_factory, session_factory
from app.storage.migrate import upgrade_async

POLL_INTERVAL_S = 1.0


def build_app(
    settings: Settings, *, poll_interval_s: float = POLL_INTERVAL_S
) -> FastAPI:
    """The events router over a migrated database, with a running broker."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await upgrade_async(settings.database_url)
        engine = create_engine(settings.database_url)
        sessions = session_factory(engine)
        read_sessions = read_session_factory(engine)
        broker = EventBroker(
            read_sessions,
            buffer_size=settings.sse_buffer_size,
            poll_interval_s=poll_interval_s,
            dialect=engine.dialect.name,
        )
        set_notifier(engine, broker)
        await broker.start()
        app.state.runtime = SimpleNamespace(
            settings=settings,
            sessions=sessions,
            read_sessions=read_sessions,
            broker=broker,
            loop=asyncio.get_running_loop(),
        )
        try:
            yield
        finally:
            await broker.stop()
            set_notifier(engine, None)
            await engine.dispose()

    app = FastAPI(lifespan=lifespan)
    app.include_router(events.router)
    app.add_exception_handler(ServiceError, _on_service_error)
    app.add_exception_handler(RequestValidationError, _on_invalid_request)
    return app


async def _on_service_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ServiceError)
    body = {"error": error.code, "detail": error.detail}
    return JSONResponse(body, status_code=error.status_code)


async def _on_invalid_request(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    detail = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in error.errors()]
    return JSONResponse({"error": "validation_error", "detail": detail}, 422)


def main() -> None:
    """Serve on the main thread, so that uvicorn handles SIGTERM itself."""
    database_url, port = sys.argv[1], int(sys.argv[2])
    settings = Settings(database_url=database_url, sse_keepalive_ms=60_000)
    uvicorn.run(
        build_app(settings),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
