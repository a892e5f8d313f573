"""What the lifespan builds and the routes and workers share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.storage.db import SessionFactory

if TYPE_CHECKING:
    from app.events.broker import EventBroker


@dataclass
class Runtime:
    """The live parts of one service process."""

    settings: Settings
    engine: AsyncEngine
    sessions: SessionFactory
    read_sessions: SessionFactory
    wake_workers: Callable[[], None] = field(default=lambda: None)
    wake_monitor: Callable[[], None] = field(default=lambda: None)
    workers_running: Callable[[], bool] = field(default=lambda: False)
    broker: EventBroker | None = None
