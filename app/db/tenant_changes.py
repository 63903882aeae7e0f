"""Changes to `platform.tenants` as they commit, with proof that none was missed.

Shared migration 0002 puts a trigger on the table that notifies channel `tessera_tenants`
with the slug of every row written. `TenantChangeFeed` listens on a connection of its own
and, every quarter second, pings itself from a second connection. PostgreSQL delivers
notifications in the order their transactions committed, so once a ping is back, every
change committed before the ping was sent has been delivered: `live_until` is then that
send time plus the window the registry allows. The ping goes out on a second connection
because behind PgBouncer in transaction mode a session's own notifications come back to
it while other sessions' are dropped (the listener is linked to no server connection when
they arrive); from another connection, nothing comes back there, and the registry stays
on its TTL. DATABASE_LISTEN_URL, when set, is where both connections go: PostgreSQL itself,
past a transaction pooler (docs/decisions/0021-change-notifications-past-the-pooler.md).
See docs/decisions/0009-tenant-registry-kept-warm-by-notify.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Callable
from typing import Any

from app.core.config import Settings
from app.db.engine import connect_outside_pool

logger = logging.getLogger("tessera.tenants")

CHANNEL = "tessera_tenants"
EVERY_TENANT = "*"  # the payload after a TRUNCATE: slugs never contain "*"
PING_INTERVAL_SECONDS = 0.25
PING_INTERVAL_MIN_SECONDS = 0.05
SILENCE_LIMIT_SECONDS = 3.0  # a ping unanswered this long: the listener is not hearing
RETRY_FIRST_SECONDS = 0.1
RETRY_MAX_SECONDS = 2.0
# No ping ever came back on a fresh listener: not an outage but this path (a transaction
# pooler, or the trigger missing until `tessera migrate` runs); try again now and then.
RETRY_UNHEARD_SECONDS = 30.0
APPLICATION_NAME = "tessera-registry"


class ListenerSilent(Exception):
    """Pings stopped coming back on a listener that used to hear them."""


class ListenerUnheard(Exception):
    """No ping ever came back on this listener."""


class TenantChangeFeed:
    """Calls `on_change(slug)` for each committed change of a tenant row, and keeps
    `live_until`: the monotonic time until which every change committed `window` seconds
    before it has been passed on. Entries a caller loaded while `listening_epoch` was the
    current `epoch` may be trusted until then."""

    def __init__(
        self, settings: Settings, on_change: Callable[[str], None], *, window: float
    ) -> None:
        self._settings = settings
        self._on_change = on_change
        self._window = window
        # Several pings per window (at most one per 50 ms when the window is tiny).
        self._interval = max(PING_INTERVAL_MIN_SECONDS, min(PING_INTERVAL_SECONDS, window / 3))
        self._ping_channel = f"tessera_registry_ping_{uuid.uuid4().hex[:16]}"
        self.epoch = 0  # bumped when a listener starts hearing and when it stops
        self.live_until = -math.inf
        self._listening = False
        self._heard = False
        self._sent: dict[int, float] = {}  # ping number → when it was sent, oldest first
        self._seq = 0
        self._retry = RETRY_FIRST_SECONDS
        self._outage = False
        self._listener: Any = None  # asyncpg.Connection (tests terminate its backend)
        self._task: asyncio.Task[None] | None = None

    @property
    def listening_epoch(self) -> int | None:
        """The current epoch while a listener is LISTENing, else None."""
        return self.epoch if self._listening else None

    @property
    def live(self) -> bool:
        return time.monotonic() < self.live_until

    def start(self) -> None:
        """Listen in the background; returns at once (start-up never waits for PostgreSQL)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="tessera tenant change feed"
            )

    async def aclose(self) -> None:
        """Stop listening. Raises CancelledError only if aclose itself is cancelled while it
        waits, never for the feed's own cancellation: `await task` would re-raise that, and
        `cancelling()` cannot tell the two apart once the caller was cancelled before (as
        uvicorn's forced exit, a second Ctrl-C, cancels the lifespan), which printed a
        CancelledError traceback at shutdown."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        await asyncio.wait([task])
        if not task.cancelled() and task.exception() is not None:
            logger.warning("tenant registry: listener ended with %r", task.exception())

    async def _run(self) -> None:
        while True:
            try:
                await self._listen()
            except ListenerUnheard:
                self._warn(
                    "tenant registry: no ping came back within %.0f s (the tenants trigger "
                    "is missing until `tessera migrate` runs, or LISTEN cannot work on this "
                    "connection, as through PgBouncer in transaction mode: set "
                    "DATABASE_POOLER=transaction and DATABASE_LISTEN_URL); lookups stay on "
                    "the TTL, next try in %.0f s",
                    SILENCE_LIMIT_SECONDS,
                    RETRY_UNHEARD_SECONDS,
                )
                wait = RETRY_UNHEARD_SECONDS
            except Exception as exc:  # any failure: fall back to the TTL, never crash
                self._warn(
                    "tenant registry: change notifications interrupted (%s); lookups use "
                    "the TTL until they resume",
                    type(exc).__name__,
                )
                wait = self._retry
                self._retry = min(self._retry * 2, RETRY_MAX_SECONDS)
            await asyncio.sleep(wait)

    async def _listen(self) -> None:
        """One listener and its pinger, until either fails; always ends by raising."""
        lost = asyncio.Event()
        connections: list[Any] = []
        try:
            for _ in range(2):
                conn = await connect_outside_pool(
                    self._settings, APPLICATION_NAME, dsn=self._settings.listen_dsn
                )
                connections.append(conn)
                conn.add_termination_listener(lambda _conn: lost.set())
            self._listener, pinger = connections
            await self._listener.add_listener(CHANNEL, self._changed)
            await self._listener.add_listener(self._ping_channel, self._pong)
            self.epoch += 1
            self._listening = True
            self._heard = False
            while not lost.is_set():
                await self._ping(pinger)
                if self._sent:
                    oldest = next(iter(self._sent.values()))
                    if time.monotonic() - oldest > SILENCE_LIMIT_SECONDS:
                        raise ListenerSilent() if self._heard else ListenerUnheard()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._interval):
                        await lost.wait()
            raise ConnectionResetError("connection closed")
        finally:
            # Entries of this epoch may have missed notifications from here on.
            self._listening = False
            self.epoch += 1
            self.live_until = -math.inf
            self._sent.clear()
            self._listener = None
            for conn in connections:
                conn.terminate()

    async def _ping(self, pinger: Any) -> None:
        self._seq += 1
        seq = self._seq
        self._sent[seq] = time.monotonic()  # before sending: the ping may be back first
        try:
            # Sent only while the trigger is there and fires for ordinary sessions
            # (enabled 'O'rigin or 'A'lways): without it changes go unnotified, so no ping
            # may come back either.
            await pinger.execute(
                f"SELECT pg_notify('{self._ping_channel}', '{seq}') FROM pg_trigger "
                "WHERE tgrelid = to_regclass('platform.tenants') "
                "AND tgname = 'tenants_notify' AND tgenabled IN ('O', 'A')"
            )
        except BaseException:
            self._sent.pop(seq, None)
            raise

    def _changed(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self._on_change(payload)

    def _pong(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        number = int(payload) if payload.isdigit() else -1
        sent = self._sent.get(number)
        if sent is None:
            return  # sent before this listener (or already superseded)
        for seq in [seq for seq in self._sent if seq <= number]:
            del self._sent[seq]
        self.live_until = sent + self._window
        self._retry = RETRY_FIRST_SECONDS
        if not self._heard:
            self._heard = True
            if self._outage:
                self._outage = False
                logger.info("tenant registry: change notifications arrive again")

    def _warn(self, message: str, *args: object) -> None:
        """Once per outage: a database that stays away must not flood the log."""
        if not self._outage:
            self._outage = True
            logger.warning(message, *args)
