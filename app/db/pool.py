"""The request path's connections: checkout and checkin, parking, retirement, one object per
engine (TenantConnections), built once in the lifespan next to the engine it serves.

Every tenant transaction of the request path comes from `TenantConnections.transaction`,
which pins it with the SQL of app/db/tenancy.py and hands the repositories an executor
(app/db/executor.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from asyncpg.exceptions import InvalidParameterValueError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection, QueuePool
from sqlalchemy.util import greenlet_spawn

from app.core.config import Settings
from app.core.errors import TenantNotFoundForToken
from app.db.connection_errors import answer_for, idle_and_clean, lost, refused
from app.db.executor import StatementCache, TenantSession
from app.db.fair_share import OnBusy, TenantShare, TenantSlots
from app.db.tenancy import TenantSchema, begin_pinned_sql

DEFAULT_TIMEOUT_SECONDS = 4.0
ROLLBACK_TIMEOUT_SECONDS = 1.0

# How long a parked connection waits for the next transaction before it goes back to the
# pool (its read-only transaction committed first, if it has one, which holds only ACCESS
# SHARE locks: a migration or a tenant deletion waits at most this long for it).
PARK_SECONDS = 0.05

# Each PostgreSQL backend caches the catalog of every schema it has worked in (about 40 KiB
# each) until it exits, so a pooled connection that serves every tenant in turn would grow
# with the tenant count. Connections are retired once they have been pinned to this many
# schemas (DB_MAX_SCHEMAS_PER_CONNECTION); the pool opens new ones.
DEFAULT_MAX_SCHEMAS_PER_CONNECTION: int = Settings.model_fields[
    "db_max_schemas_per_connection"
].default
_SCHEMAS_SEEN = "tessera_schemas_seen"  # in the pool's per-connection info (cleared on reconnect)


def _driver(pooled: PoolProxiedConnection) -> Any:
    raw = pooled.driver_connection  # asyncpg.Connection
    assert raw is not None
    return raw


@dataclass(slots=True)
class _Parked:
    pooled: PoolProxiedConnection
    timer: asyncio.TimerHandle
    owes_commit: bool  # a read-only transaction still open on it; else idle and clean


class TenantConnections:
    """The engine's pooled connections as the request path uses them.

    Parking: a read-only transaction that has done its work stays open on its connection;
    the next transaction takes that connection (newest first) and sends the COMMIT in the
    same round trip as its own BEGIN and pin, so a cached read that misses costs two
    PostgreSQL round trips instead of three, and no pool checkout
    (docs/decisions/0014-read-only-commit-rides-with-the-next-begin.md). A connection whose
    write has committed is parked too, idle and clean: the next transaction skips the pool's
    checkout, a greenlet hop (docs/decisions/0029). At most half the pool is parked, so
    SQLAlchemy's own users (registry, admin) always find connections going round the pool,
    and none while the pool is exhausted, so a request queued on it is served first.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        max_schemas_per_connection: int = DEFAULT_MAX_SCHEMAS_PER_CONNECTION,
        park_seconds: float = PARK_SECONDS,
        slots: TenantSlots | None = None,
    ) -> None:
        self.engine = engine
        self.slots = slots  # None: no tenant's concurrency is capped (FAIR_SHARE_ENABLED=false)
        self.max_schemas = max_schemas_per_connection
        self.park_seconds = park_seconds
        self.statements = StatementCache(engine.dialect)
        self._pool = engine.sync_engine.pool
        self._capacity = max(1, self._pool.size() // 2)  # type: ignore[attr-defined]
        self._parked: list[_Parked] = []
        self._finishing: set[asyncio.Task[None]] = set()

    @classmethod
    def for_settings(
        cls, engine: AsyncEngine, settings: Settings, *, on_busy: OnBusy | None = None
    ) -> TenantConnections:
        """`on_busy(tenant)` hears each request refused 429 tenant_busy (the metric)."""
        slots = TenantSlots.for_settings(settings, on_rejection=on_busy)
        max_schemas = settings.db_max_schemas_per_connection
        return cls(engine, max_schemas_per_connection=max_schemas, slots=slots)

    @asynccontextmanager
    async def transaction(
        self,
        tenant: TenantSchema,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        read_only: bool = False,
        share: TenantShare | None = None,
        first: str | None = None,
    ) -> AsyncIterator[TenantSession]:
        """The one way into a tenant's data on the request path: a pooled connection in one
        transaction, pinned to `tenant` before anything else runs. Commits when the block
        ends, rolls back when it raises. Every statement waits at most `timeout` seconds
        (DB_REQUEST_TIMEOUT_SECONDS), so a server that stops answering costs a 503, not a
        hang.

        `read_only` (the cached reads' loads) makes it `BEGIN READ ONLY` (PostgreSQL refuses
        a write in it) and lets its COMMIT wait, parked, for the next transaction's BEGIN:
        nothing in it needs committing, and COMMIT ends the pin either way.

        A connection goes back to the pool only when its COMMIT or ROLLBACK succeeded and it
        is idle outside a transaction; any other (cancelled mid-way, timed out, lost) is
        invalidated, so it can never carry a tenant's pin or an unfinished operation into
        another request. A connection the server dropped is a `ConnectionLost` (503), never
        asyncpg's refusal of a statement on it (500); see `_discard_dead`.

        `share` (the tenant's plan, app/db/fair_share.py): one of the tenant's slots taken
        before any pooled connection (429 tenant_busy after a bounded wait), and its
        statement timeout set in the pin (a statement it cancels: `StatementTimeout`, 503).

        `first`: a statement (inline values) sent after the pin in the BEGIN's round trip;
        its command status waits on the session for `at_begin` (app/db/executor.py). An
        error in it fails the BEGIN: the connection is discarded and nothing ran.
        """
        slots, held = self.slots, share
        if slots is not None and held is not None:
            await slots.take(held)  # before the pool: a tenant past its share waits here
        try:
            pooled, opened = await self._begin(
                tenant, timeout=timeout, read_only=read_only, share=share, first=first
            )
            raw = _driver(pooled)
            retire = self._worn_out(pooled, tenant.schema)
            parked = ended = False
            try:
                try:
                    yield (
                        session := TenantSession(
                            raw,
                            self.statements,
                            timeout,
                            opened_with=None if first is None else (first, opened),
                        )
                    )
                except BaseException as exc:
                    # Short: if the server does not answer, the connection is dropped
                    # instead. Whatever happens to the ROLLBACK, nothing of this transaction
                    # was committed, so the request's own error stays the answer (a lost
                    # connection is a 503, a statement the server cancelled a 503 too).
                    with contextlib.suppress(Exception):  # not proven idle: discarded below
                        await raw.execute(
                            "ROLLBACK", timeout=min(timeout, ROLLBACK_TIMEOUT_SECONDS)
                        )
                        ended = True
                    if (answer := answer_for(exc, raw)) is not None:
                        raise answer from exc
                    raise
                parked = read_only and not retire and self._park(pooled, owes_commit=True)
                if not parked:
                    try:
                        await raw.execute(session.commit_sql(), timeout=timeout)
                    except Exception as exc:
                        # A statement that rode with the COMMIT may be cancelled too.
                        if (answer := answer_for(exc, raw)) is not None:
                            raise answer from exc
                        raise
                    ended = True
            finally:
                if parked:
                    pass  # committed later: with the next BEGIN, or after park_seconds
                elif ended and idle_and_clean(raw) and not retire:
                    if not self._park(pooled, owes_commit=False):
                        await self._checkin(pooled)
                elif raw.is_closed():
                    await self._discard_dead(pooled)
                else:  # not ended cleanly, or retired: its backend (and catalog cache) goes
                    await greenlet_spawn(pooled.invalidate)
        finally:
            if slots is not None and held is not None:
                slots.give_back(held)

    async def _begin(
        self,
        tenant: TenantSchema,
        *,
        timeout: float,
        read_only: bool,
        share: TenantShare | None = None,
        first: str | None = None,
    ) -> tuple[PoolProxiedConnection, str]:
        """A connection with this transaction's BEGIN and pin done, and `first` after them,
        in one round trip, with the command status of the last statement sent. When the
        connection turns out to be one the server had dropped, nothing of the request has
        run yet: it is discarded with its generation and the BEGIN goes once more to a
        fresh one."""
        for attempt in range(2):
            parked = self._take_parked()
            owes_commit = parked is not None and parked.owes_commit
            pooled = parked.pooled if parked is not None else await self._checkout()
            raw = _driver(pooled)
            timeout_ms = None if share is None else share.statement_timeout_ms
            begin = begin_pinned_sql(tenant, read_only=read_only, statement_timeout_ms=timeout_ms)
            if first is not None:
                begin = f"{begin}; {first}"
            try:
                if owes_commit:
                    begin = "COMMIT; " + begin  # the parked read-only transaction ends here
                elif raw.is_in_transaction():  # never inherit someone else's transaction
                    await raw.execute("ROLLBACK", timeout=timeout)
                status: str = await raw.execute(begin, timeout=timeout)
            except BaseException as exc:
                if not raw.is_closed():
                    await greenlet_spawn(pooled.invalidate)
                    if isinstance(exc, InvalidParameterValueError):
                        # The tenant's role is gone: deleted while this replica's registry
                        # entry (at most about a second behind) still had it.
                        raise TenantNotFoundForToken("The token's tenant does not exist.") from exc
                    if (answer := answer_for(exc, raw)) is not None:  # `first`, cancelled
                        raise answer from exc
                    raise
                await self._discard_dead(pooled)
                if attempt == 0 and isinstance(exc, Exception):
                    continue
                if refused(exc):
                    raise lost(exc) from exc
                raise
            return pooled, status
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        """Commit and return every parked connection (before the engine is disposed)."""
        while self._parked:
            parked = self._parked.pop()
            parked.timer.cancel()
            await self._finish(parked)
        await asyncio.gather(*self._finishing, return_exceptions=True)

    # Checkout and checkin.

    async def _checkout(self) -> PoolProxiedConnection:
        """A connection from the engine's pool (one greenlet hop: the pool may connect,
        recycle or wait), replacing one the server dropped while it sat idle (restart,
        failover)."""
        pooled = await self.engine.raw_connection()
        if _driver(pooled).is_closed():
            await self._discard_dead(pooled)  # its generation is recycled at checkout
            pooled = await self.engine.raw_connection()
        return pooled

    async def _discard_dead(self, pooled: PoolProxiedConnection) -> None:
        """Throw away a connection the server dropped, and with it every pooled connection
        opened before it (they are replaced at their next checkout), as SQLAlchemy does on a
        disconnect: a restart or crash drops them all.

        Why asyncpg's `is_closed()` is not enough to find them first: a PostgreSQL shutdown
        (`pg_ctl -m fast`, `pg_terminate_backend`, `idle_session_timeout`) sends each
        backend's client a FATAL ErrorResponse and then closes the socket. On an idle
        connection asyncpg takes that unsolicited message as a protocol error and waits, in
        state ERROR_CONSUME, for a ReadyForQuery that never comes, and the connection still
        reports open until the event loop has read the end of the stream, an iteration or
        more later. A statement sent in between is refused before anything goes out
        ("cannot switch to state 15; another operation (2) is in progress", asyncpg issue
        784) and the connection is aborted, so it is closed by the time we look: that is how
        it is recognised here, as SQLAlchemy's asyncpg dialect recognises a disconnect."""
        await greenlet_spawn(self._pool._invalidate, pooled)  # noqa: SLF001 (SQLAlchemy's disconnect path)

    async def _checkin(self, pooled: PoolProxiedConnection) -> None:
        """Back to the pool. Without a greenlet hop when returning it cannot close anything:
        a QueuePool only closes a connection it has no room for (overflow), and the reset on
        return is a no-op, since the transaction was ours, not SQLAlchemy's, and has ended.
        That hop was a third of what checking a connection out and in cost (decision 0008)."""
        if isinstance(self._pool, QueuePool) and self._pool.overflow() <= 0:
            pooled.close()
        else:
            await greenlet_spawn(pooled.close)

    def _worn_out(self, pooled: PoolProxiedConnection, schema: str) -> bool:
        """Record that `pooled` was pinned to `schema`; True once it has seen too many."""
        seen: set[str] = pooled.info.setdefault(_SCHEMAS_SEEN, set())
        seen.add(schema)
        return len(seen) > self.max_schemas

    # Parking.

    def _take_parked(self) -> _Parked | None:
        while self._parked:
            parked = self._parked.pop()
            parked.timer.cancel()
            if not _driver(parked.pooled).is_closed():
                return parked
            self._in_background(self._discard_dead(parked.pooled))
        return None

    def _park(self, pooled: PoolProxiedConnection, *, owes_commit: bool) -> bool:
        if len(self._parked) >= self._capacity or self._pool_exhausted():
            return False
        timer = asyncio.get_running_loop().call_later(self.park_seconds, self._expire, pooled)
        self._parked.append(_Parked(pooled, timer, owes_commit))
        return True

    def _pool_exhausted(self) -> bool:
        """True when every connection the pool may open is checked out (parked ones
        count): a request may be queued on the pool, and a parked connection would make it
        wait up to park_seconds while newer requests took it (measured: p99 215-240 ms
        instead of 85 with DB_MAX_OVERFLOW=0). The connection goes back to the pool then."""
        pool = self._pool
        if not isinstance(pool, QueuePool) or pool._max_overflow < 0:  # noqa: SLF001
            return False  # no limit: nobody ever waits
        return pool.checkedout() >= pool.size() + pool._max_overflow  # noqa: SLF001

    def _expire(self, pooled: PoolProxiedConnection) -> None:
        for index, parked in enumerate(self._parked):
            if parked.pooled is pooled:
                del self._parked[index]
                self._in_background(self._finish(parked))
                return

    async def _finish(self, parked: _Parked) -> None:
        pooled = parked.pooled
        try:
            if parked.owes_commit:
                await _driver(pooled).execute("COMMIT", timeout=DEFAULT_TIMEOUT_SECONDS)
        except Exception:
            await greenlet_spawn(pooled.invalidate)
        else:
            await self._checkin(pooled)

    def _in_background(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(work)
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)
