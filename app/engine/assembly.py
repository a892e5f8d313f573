"""Builds the background parts of a service process and stops them in order."""

from __future__ import annotations

from contextlib import AsyncExitStack

from app.engine.context import EngineContext
from app.engine.heartbeats import Heartbeater
from app.engine.monitor import Monitor
from app.engine.workers import WorkerPool
from app.events.broker import EventBroker
from app.events.listener import PostgresListener
from app.events.retention import EventPruner
from app.events.store import set_notifier
from app.runtime import Runtime
from app.tinker.client import TinkerClient
from app.webhooks.delivery import WebhookDispatcher

PRUNE_INTERVAL_S = 600.0


async def start_background(runtime: Runtime, stack: AsyncExitStack) -> None:
    """Start the event broker, webhooks, workers, monitor and heartbeats.

    `stack` unwinds in reverse: the monitor stops taking work first, then the
    workers finish or hand back what they hold, and the connections close last.
    """
    settings = runtime.settings
    tinker = TinkerClient(
        settings.tinker_base_url,
        settings.tinker_api_key.get_secret_value() if settings.tinker_api_key else None,
        max_connections=settings.tinker_max_connections,
        timeout_s=settings.tinker_timeout_ms / 1000,
    )
    stack.push_async_callback(tinker.aclose)

    broker = EventBroker(
        runtime.read_sessions,
        buffer_size=settings.sse_buffer_size,
        dialect=runtime.engine.dialect.name,
    )
    if runtime.engine.dialect.name == "postgresql":
        # Events committed by other replicas reach this one's subscribers.
        broker.listen(PostgresListener(settings.database_url))
    set_notifier(runtime.engine, broker)
    stack.callback(set_notifier, runtime.engine, None)
    runtime.broker = broker
    webhooks = WebhookDispatcher(runtime.sessions, settings)
    ctx = EngineContext(
        settings=settings,
        sessions=runtime.sessions,
        tinker=tinker,
        wake_webhooks=webhooks.notify,
    )
    workers = WorkerPool(ctx)
    monitor = Monitor(ctx, workers)
    ctx.wake_workers = runtime.wake_workers = workers.wake
    ctx.wake_monitor = runtime.wake_monitor = monitor.wake
    runtime.workers_running = lambda: workers.running and monitor.running

    pruner = EventPruner(
        runtime.sessions, settings.event_retention_hours, PRUNE_INTERVAL_S
    )
    parts = (broker, webhooks, pruner, Heartbeater(ctx), workers, monitor)
    for part in parts:
        await part.start()
        stack.push_async_callback(part.stop)
