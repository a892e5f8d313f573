"""Wake-ups from other replicas: a Postgres LISTEN connection feeding the broker.

Every transaction that appends events on Postgres also sends a notification
on `EVENTS_CHANNEL`, delivered when it commits. One dedicated connection per
service process listens on that channel and wakes the broker, which then reads
the new rows from the table as it does for local commits. The notification
carries nothing: the table stays the only source of events, so a lost or
duplicated notification costs at most an extra or a later read.

A listener that loses its connection reconnects with capped backoff and wakes
the broker once it is back, so that what was committed while nobody listened
is read at once rather than at the broker's next timer tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import asyncpg  # type: ignore[import-untyped]

from app.events.store import EVENTS_CHANNEL

logger = logging.getLogger(__name__)

APPLICATION_NAME = "tinker-recovery-listener"
CONNECT_TIMEOUT_S = 10.0
# What a broken or unreachable database raises.
CONNECTION_ERRORS = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    TimeoutError,
)


def asyncpg_dsn(database_url: str) -> str:
    """The SQLAlchemy URL of the service, as asyncpg takes it."""
    return database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


class PostgresListener:
    """Calls `notify` for every notification on the events channel, for good.

    Use as a broker listener: `broker.listen(PostgresListener(url))`. The
    connection is also checked every `check_interval_s`, since a connection
    dropped by the network may close without telling anyone.
    """

    def __init__(
        self,
        database_url: str,
        *,
        channel: str = EVENTS_CHANNEL,
        application_name: str = APPLICATION_NAME,
        backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
        check_interval_s: float = 10.0,
    ) -> None:
        self.dsn = asyncpg_dsn(database_url)
        self.channel = channel
        self.application_name = application_name
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.check_interval_s = check_interval_s
        self.connections = 0

    async def __call__(self, notify: Callable[[], None]) -> None:
        """Listen until cancelled, reconnecting whenever the connection is lost."""
        delay = self.backoff_s
        while True:
            connection = await self.reconnect()
            loop = asyncio.get_running_loop()
            since = loop.time()
            try:
                await self.follow(connection, notify)
            finally:
                await close_quietly(connection)
            # A connection that is dropped as soon as it is made must not be
            # made again in a tight loop; one that lived a while starts over.
            if loop.time() - since > self.max_backoff_s:
                delay = self.backoff_s
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_backoff_s)

    async def reconnect(self) -> asyncpg.Connection:
        """A new connection, retried with capped backoff until one is made."""
        delay = self.backoff_s
        while True:
            try:
                return await self.connect()
            except CONNECTION_ERRORS as error:
                logger.warning(
                    "events.listener.connect_failed",
                    extra={"error": type(error).__name__, "retry_s": delay},
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_backoff_s)

    async def connect(self) -> asyncpg.Connection:
        connection: asyncpg.Connection = await asyncpg.connect(
            self.dsn,
            timeout=CONNECT_TIMEOUT_S,
            server_settings={"application_name": self.application_name},
        )
        return connection

    async def follow(
        self, connection: asyncpg.Connection, notify: Callable[[], None]
    ) -> None:
        """Relay notifications until the connection is lost."""
        lost = asyncio.Event()
        connection.add_termination_listener(lambda _: lost.set())
        await connection.add_listener(self.channel, lambda *_: notify())
        self.connections += 1
        logger.info(
            "events.listener.listening",
            extra={"channel": self.channel, "connections": self.connections},
        )
        # Listening starts only now: what committed before was announced to
        # nobody here, so read the table once.
        notify()
        while await self.alive(connection, lost):
            pass
        logger.warning("events.listener.connection_lost")

    async def alive(self, connection: asyncpg.Connection, lost: asyncio.Event) -> bool:
        """Wait one check interval; False once the connection is known to be gone."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.check_interval_s):
                await lost.wait()
                return False
        try:
            await connection.fetchval("SELECT 1", timeout=self.check_interval_s)
        except CONNECTION_ERRORS:
            return False
        return True


async def close_quietly(connection: asyncpg.Connection) -> None:
    """Close a connection that may already be broken."""
    try:
        await asyncio.wait_for(connection.close(), timeout=2.0)
    except CONNECTION_ERRORS:
        connection.terminate()
