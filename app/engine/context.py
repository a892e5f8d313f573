"""What the engine's parts share."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from app.config import Settings
from app.storage.db import SessionFactory
from app.tinker.client import TinkerClient


@dataclass
class EngineContext:
    """The database, Tinker and the wake-up calls of the other parts."""

    settings: Settings
    sessions: SessionFactory
    tinker: TinkerClient
    wake_workers: Callable[[], None] = field(default=lambda: None)
    wake_monitor: Callable[[], None] = field(default=lambda: None)
    wake_webhooks: Callable[[], None] = field(default=lambda: None)
    rng: random.Random = field(default_factory=random.Random)
