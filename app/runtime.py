"""What the lifespan builds and the routes and workers share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.storage.db import SessionFactory


@dataclass
class Runtime:
    """The live parts of one service process."""

    settings: Settings
    engine: AsyncEngine
    sessions: SessionFactory
    wake_workers: Callable[[], None] = field(default=lambda: None)
    wake_monitor: Callable[[], None] = field(default=lambda: None)
    workers_running: Callable[[], bool] = field(default=lambda: False)
