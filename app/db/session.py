"""TenantSession: a pinned transaction on one pooled asyncpg connection, running SQLAlchemy
Core statements compiled once.

SQLAlchemy builds every statement (models, Core expressions) and owns the pool; this module
only executes. Per statement it costs a cache-key lookup and asyncpg's own prepared
statement, instead of SQLAlchemy's execution context, result machinery and greenlet
bridge (measured: 149 µs against 371 µs of CPU for BEGIN + pin + one read + COMMIT; see
docs/decisions/0008-tenant-session-fast-path.md). BEGIN and the tenant pin travel in one
round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import (
    AsyncIterator,
    Callable,
    Coroutine,
    Iterator,
    Mapping,
    MutableMapping,
    Sequence,
)
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from weakref import WeakKeyDictionary

from asyncpg.exceptions import InterfaceError, InternalClientError, InvalidParameterValueError
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection, QueuePool
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.util import greenlet_spawn

from app.core.config import Settings
from app.core.errors import TenantNotFoundForToken
from app.db.tenancy import TenantSchema, begin_pinned_sql

Processor = Callable[[Any], Any] | None

DEFAULT_TIMEOUT_SECONDS = 4.0
ROLLBACK_TIMEOUT_SECONDS = 1.0


class Row(Sequence[Any]):
    """One result row: by position, by column name (`row.name`), or as `row._mapping`."""

    __slots__ = ("_values", "_keys")

    def __init__(self, values: tuple[Any, ...], keys: Mapping[str, int]) -> None:
        self._values = values
        self._keys = keys

    def __getitem__(self, index: Any) -> Any:
        return self._values[index]

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[self._keys[name]]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def _mapping(self) -> dict[str, Any]:
        return {key: self._values[i] for key, i in self._keys.items()}


class Result:
    """The subset of SQLAlchemy's Result the repositories use."""

    __slots__ = ("_rows",)

    def __init__(self, rows: list[Row]) -> None:
        self._rows = rows

    def all(self) -> list[Row]:
        return self._rows

    def one(self) -> Row:
        if len(self._rows) != 1:
            raise LookupError(f"expected one row, got {len(self._rows)}")
        return self._rows[0]

    def one_or_none(self) -> Row | None:
        if len(self._rows) > 1:
            raise LookupError(f"expected at most one row, got {len(self._rows)}")
        return self._rows[0] if self._rows else None

    def first(self) -> Row | None:
        return self._rows[0] if self._rows else None

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None

    def scalars(self) -> Iterator[Any]:
        return (row[0] for row in self._rows)


@dataclass(frozen=True, slots=True)
class _Prepared:
    compiled: SQLCompiler
    sql: str
    positions: tuple[str, ...]
    bind_processors: Mapping[str, Processor]
    keys: Mapping[str, int]
    result_processors: tuple[Processor, ...]


# Statements built once at import, their values all bind parameters (`prebuilt`), by id();
# kept here so that no id is ever reused by another object.
_PREBUILT: dict[int, ClauseElement] = {}

Statement = TypeVar("Statement", bound=ClauseElement)


def prebuilt(statement: Statement) -> Statement:
    """Mark a statement built once, at import, with every value a `bindparam` (passed as
    parameters on each call), for the hot reads: TenantSession finds its compiled form by
    identity instead of building the statement and its SQLAlchemy cache key on every call
    (about 110 µs of CPU per read here). Any Executor runs it the usual way."""
    _PREBUILT[id(statement)] = statement
    return statement


class StatementCache:
    """Compiled statements by SQLAlchemy cache key (bounded; one per process)."""

    def __init__(self, dialect: Dialect, size: int = 2000) -> None:
        self.dialect = dialect
        self.size = size
        self._entries: dict[Any, _Prepared] = {}
        self._prebuilt: dict[int, _Prepared] = {}

    def prepare(
        self, statement: ClauseElement, params: Mapping[str, Any] | None = None
    ) -> tuple[_Prepared, MutableMapping[str, Any]]:
        """The compiled form of `statement` and its parameters, by bind name."""
        prepared = self._prebuilt.get(id(statement))
        if prepared is None and _PREBUILT.get(id(statement)) is statement:
            prepared = self._compile(statement, render_postcompile=False)
            if prepared.compiled.post_compile_params:
                raise ValueError("a prebuilt statement cannot hold an IN list of values")
            self._prebuilt[id(statement)] = prepared
        if prepared is not None:
            return prepared, prepared.compiled.construct_params(params) or {}
        cache_key = statement._generate_cache_key()  # noqa: SLF001 (SQLAlchemy's cache key)
        prepared = self._entries.get(cache_key.key) if cache_key is not None else None
        if prepared is None:
            prepared = self._compile(statement, render_postcompile=False, cache_key=cache_key)
            if cache_key is None or prepared.compiled.post_compile_params:
                # IN lists (their length is part of the SQL) or uncacheable: compile each time.
                once = self._compile(statement, render_postcompile=True)
                return once, once.compiled.construct_params(params) or {}
            if len(self._entries) >= self.size:
                self._entries.clear()
            self._entries[cache_key.key] = prepared
        assert cache_key is not None
        values = prepared.compiled.construct_params(
            params, extracted_parameters=cache_key.bindparams
        )
        return prepared, values or {}

    def _compile(
        self, statement: ClauseElement, *, render_postcompile: bool, cache_key: Any = None
    ) -> _Prepared:
        compiled = statement.compile(
            dialect=self.dialect,
            cache_key=cache_key,
            compile_kwargs={"render_postcompile": render_postcompile},
        )
        assert isinstance(compiled, SQLCompiler)
        keys: dict[str, int] = {}
        result_processors: list[Processor] = []
        for index, entry in enumerate(compiled._result_columns):  # noqa: SLF001
            keys.setdefault(entry.keyname, index)
            result_processors.append(
                entry.type._cached_result_processor(self.dialect, None)  # noqa: SLF001
            )
        return _Prepared(
            compiled=compiled,
            sql=compiled.string,
            positions=tuple(compiled.positiontup or ()),
            bind_processors=dict(compiled._bind_processors),  # type: ignore[arg-type]  # noqa: SLF001
            keys=keys,
            result_processors=tuple(result_processors),
        )


class Executor(Protocol):
    """What repositories need of a connection: a TenantSession on the request path, or a
    SQLAlchemy AsyncConnection (CLI, tests) pinned with `pin_tenant`."""

    async def execute(self, statement: Any, parameters: Any = None, /) -> Any: ...

    async def scalar(self, statement: Any, parameters: Any = None, /) -> Any: ...


class TenantSession:
    """One request's transaction, pinned to its tenant before anything else runs."""

    def __init__(self, raw: Any, cache: StatementCache, timeout: float) -> None:
        self._raw = raw  # asyncpg.Connection
        self._cache = cache
        self._timeout = timeout

    async def execute(
        self, statement: ClauseElement, parameters: Mapping[str, Any] | None = None
    ) -> Result:
        prepared, values = self._cache.prepare(statement, parameters)
        args = []
        for name in prepared.positions:
            value = values[name]
            processor = prepared.bind_processors.get(name)
            args.append(processor(value) if processor is not None else value)
        records = await self._raw.fetch(prepared.sql, *args, timeout=self._timeout)
        if not records:
            return Result([])
        processors = prepared.result_processors
        keys = prepared.keys
        if not keys:  # textual SQL: the columns are only known from the answer
            keys = {name: i for i, name in enumerate(records[0].keys())}
            processors = ()
        if processors and any(p is not None for p in processors):
            rows = [
                Row(
                    tuple(p(v) if p is not None else v for p, v in zip(processors, r, strict=True)),
                    keys,
                )
                for r in records
            ]
        else:
            rows = [Row(tuple(r), keys) for r in records]
        return Result(rows)

    async def scalar(
        self, statement: ClauseElement, parameters: Mapping[str, Any] | None = None
    ) -> Any:
        return (await self.execute(statement, parameters)).scalar()


_caches: WeakKeyDictionary[Dialect, StatementCache] = WeakKeyDictionary()


def statement_cache(engine: AsyncEngine) -> StatementCache:
    """The engine's compiled-statement cache (compiled SQL depends on the dialect)."""
    dialect = engine.dialect
    cache = _caches.get(dialect)
    if cache is None:
        cache = _caches[dialect] = StatementCache(dialect)
    return cache


def _driver(pooled: PoolProxiedConnection) -> Any:
    raw = pooled.driver_connection  # asyncpg.Connection
    assert raw is not None
    return raw


class ConnectionLost(ConnectionError):
    """The server dropped a connection under a statement, or asyncpg refused a statement
    on a connection it no longer holds idle (see `_discard_dead`): 503, never 500."""


async def _discard_dead(engine: AsyncEngine, pooled: PoolProxiedConnection) -> None:
    """Throw away a connection the server dropped, and with it every pooled connection
    opened before it (they are replaced at their next checkout), as SQLAlchemy does on a
    disconnect: a restart or crash drops them all.

    Why asyncpg's `is_closed()` is not enough to find them first: a PostgreSQL shutdown
    (`pg_ctl -m fast`, `pg_terminate_backend`, `idle_session_timeout`) sends each backend's
    client a FATAL ErrorResponse and then closes the socket. On an idle connection asyncpg
    takes that unsolicited message as a protocol error and waits, in state ERROR_CONSUME,
    for a ReadyForQuery that never comes, and the connection still reports open until the
    event loop has read the end of the stream, an iteration or more later. A statement sent
    in between is refused before anything goes out ("cannot switch to state 15; another
    operation (2) is in progress", asyncpg issue 784) and the connection is aborted, so it
    is closed by the time we look: that is how it is recognised here, as SQLAlchemy's
    asyncpg dialect recognises a disconnect (`is_disconnect`: the connection is closed)."""
    pool = engine.sync_engine.pool
    await greenlet_spawn(pool._invalidate, pooled)  # noqa: SLF001 (SQLAlchemy's own disconnect path)


async def _checkout(engine: AsyncEngine) -> PoolProxiedConnection:
    """A connection from the engine's pool (one greenlet hop: the pool may connect, recycle
    or wait), replacing one the server dropped while it sat idle (restart, failover)."""
    pooled = await engine.raw_connection()
    if _driver(pooled).is_closed():
        await _discard_dead(engine, pooled)  # its generation is recycled at checkout
        pooled = await engine.raw_connection()
    return pooled


async def _checkin(engine: AsyncEngine, pooled: PoolProxiedConnection) -> None:
    """Back to the pool. Without a greenlet hop when returning it cannot close anything: a
    QueuePool only closes a connection it has no room for (overflow), and the reset on
    return is a no-op, since the transaction was ours, not SQLAlchemy's, and has ended.
    That hop was a third of what checking a connection out and in cost (decision 0008)."""
    pool = engine.sync_engine.pool
    if isinstance(pool, QueuePool) and pool.overflow() <= 0:
        pooled.close()
    else:
        await greenlet_spawn(pooled.close)


# How long a read-only transaction may stay open, its connection parked, waiting for the
# next request to carry its COMMIT; after that it is committed and goes back to the pool.
# It holds only the read's ACCESS SHARE locks, so a migration or a tenant deletion waits
# at most this long for it.
PARK_SECONDS = 0.05


@dataclass(slots=True)
class _Parked:
    pooled: PoolProxiedConnection
    timer: asyncio.TimerHandle


class _ParkingLot:
    """Connections whose read-only transaction has done its work but is still open: the
    next tenant_transaction takes one (newest first) and sends its COMMIT in the same round
    trip as its own BEGIN and pin, so a cached read that misses costs two PostgreSQL round
    trips instead of three, and no pool checkout. At most half the pool is parked, so
    SQLAlchemy's own users (registry, admin) always find connections going round the pool,
    and none while the pool is exhausted, so a request queued on it is served first.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.capacity = max(1, engine.sync_engine.pool.size() // 2)  # type: ignore[attr-defined]
        # Also where the engine's tenant transactions find their other per-engine setting.
        self.max_schemas = DEFAULT_MAX_SCHEMAS_PER_CONNECTION
        self._parked: list[_Parked] = []
        self._finishing: set[asyncio.Task[None]] = set()

    def take(self) -> PoolProxiedConnection | None:
        while self._parked:
            parked = self._parked.pop()
            parked.timer.cancel()
            if not _driver(parked.pooled).is_closed():
                return parked.pooled
            self._in_background(_discard_dead(self.engine, parked.pooled))
        return None

    def park(self, pooled: PoolProxiedConnection) -> bool:
        if len(self._parked) >= self.capacity or self._pool_exhausted():
            return False
        timer = asyncio.get_running_loop().call_later(PARK_SECONDS, self._expire, pooled)
        self._parked.append(_Parked(pooled, timer))
        return True

    def _pool_exhausted(self) -> bool:
        """True when every connection the pool may open is checked out (parked ones
        count): a request may be queued on the pool, and a parked connection would make it
        wait up to PARK_SECONDS while newer requests took it (measured: p99 215-240 ms
        instead of 85 with DB_MAX_OVERFLOW=0). The connection goes back to the pool then."""
        pool = self.engine.sync_engine.pool
        if not isinstance(pool, QueuePool) or pool._max_overflow < 0:  # noqa: SLF001
            return False  # no limit: nobody ever waits
        return pool.checkedout() >= pool.size() + pool._max_overflow  # noqa: SLF001

    async def aclose(self) -> None:
        """Commit and return every parked connection (before the engine is disposed)."""
        while self._parked:
            parked = self._parked.pop()
            parked.timer.cancel()
            await self._finish(parked.pooled)
        await asyncio.gather(*self._finishing, return_exceptions=True)

    def _expire(self, pooled: PoolProxiedConnection) -> None:
        for index, parked in enumerate(self._parked):
            if parked.pooled is pooled:
                del self._parked[index]
                self._in_background(self._finish(pooled))
                return

    async def _finish(self, pooled: PoolProxiedConnection) -> None:
        try:
            await _driver(pooled).execute("COMMIT", timeout=DEFAULT_TIMEOUT_SECONDS)
        except Exception:
            await greenlet_spawn(pooled.invalidate)
        else:
            await _checkin(self.engine, pooled)

    def _in_background(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(work)
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)


_lots: WeakKeyDictionary[Engine, _ParkingLot] = WeakKeyDictionary()

# Each PostgreSQL backend caches the catalog of every schema it has worked in (about 40 KiB
# each) until it exits, so a pooled connection that serves every tenant in turn would grow
# with the tenant count. Connections are retired once they have been pinned to this many
# schemas (DB_MAX_SCHEMAS_PER_CONNECTION, set by build_engine); the pool opens new ones.
DEFAULT_MAX_SCHEMAS_PER_CONNECTION: int = Settings.model_fields[
    "db_max_schemas_per_connection"
].default
_SCHEMAS_SEEN = "tessera_schemas_seen"  # in the pool's per-connection info (cleared on reconnect)


def bound_schemas_per_connection(engine: AsyncEngine, schemas: int) -> None:
    _parking_lot(engine).max_schemas = schemas


def _worn_out(lot: _ParkingLot, pooled: PoolProxiedConnection, schema: str) -> bool:
    """Record that `pooled` was pinned to `schema`; True once it has seen too many."""
    seen: set[str] = pooled.info.setdefault(_SCHEMAS_SEEN, set())
    seen.add(schema)
    return len(seen) > lot.max_schemas


def _parking_lot(engine: AsyncEngine) -> _ParkingLot:
    lot = _lots.get(engine.sync_engine)
    if lot is None:
        lot = _lots[engine.sync_engine] = _ParkingLot(engine)
    return lot


async def release_parked(engine: AsyncEngine) -> None:
    """Commit the read-only transactions left open on `engine`'s parked connections and
    return them to the pool; call it before disposing of the engine."""
    lot = _lots.get(engine.sync_engine)
    if lot is not None:
        await lot.aclose()


@asynccontextmanager
async def tenant_transaction(
    engine: AsyncEngine,
    tenant: TenantSchema,
    *,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    read_only: bool = False,
) -> AsyncIterator[TenantSession]:
    """The one way into a tenant's data on the request path: a pooled connection in one
    transaction, pinned to `tenant` before anything else runs. Commits when the block ends,
    rolls back when it raises. Every statement waits at most `timeout` seconds
    (DB_REQUEST_TIMEOUT_SECONDS), so a server that stops answering costs a 503, not a hang.

    `read_only` (the cached reads' loads) makes it `BEGIN READ ONLY` (PostgreSQL refuses a
    write in it) and lets its COMMIT wait, parked, for the next transaction's BEGIN
    (_ParkingLot): nothing in it needs committing, and COMMIT ends the pin either way.

    A connection goes back to the pool only when its COMMIT or ROLLBACK succeeded and it is
    idle outside a transaction; any other (cancelled mid-way, timed out, lost) is
    invalidated, so it can never carry a tenant's pin or an unfinished operation into
    another request. A connection the server dropped is a `ConnectionLost` (503), never
    asyncpg's refusal of a statement on it (500); see `_discard_dead`.
    """
    lot = _parking_lot(engine)
    pooled = await _begin(engine, lot, tenant, timeout=timeout, read_only=read_only)
    raw = _driver(pooled)
    retire = _worn_out(lot, pooled, tenant.schema)
    parked = ended = False
    try:
        try:
            yield TenantSession(raw, statement_cache(engine), timeout)
        except BaseException as exc:
            # Short: if the server does not answer, the connection is dropped instead.
            # Whatever happens to the ROLLBACK, nothing of this transaction was committed,
            # so the request's own error stays the answer (a lost connection is a 503).
            with contextlib.suppress(Exception):  # not proven idle then: discarded below
                await raw.execute("ROLLBACK", timeout=min(timeout, ROLLBACK_TIMEOUT_SECONDS))
                ended = True
            if raw.is_closed() and _refused(exc):
                raise _lost(exc) from exc
            raise
        parked = read_only and not retire and lot.park(pooled)
        if not parked:
            try:
                await raw.execute("COMMIT", timeout=timeout)
            except Exception as exc:
                if raw.is_closed() and _refused(exc):
                    raise _lost(exc) from exc
                raise
            ended = True
    finally:
        if parked:
            pass  # the lot commits it: with the next BEGIN, or after PARK_SECONDS
        elif ended and _idle_and_clean(raw) and not retire:
            await _checkin(engine, pooled)
        elif raw.is_closed():
            await _discard_dead(engine, pooled)
        else:  # not ended cleanly, or retired: its backend (and catalog cache) goes away
            await greenlet_spawn(pooled.invalidate)


def _idle_and_clean(raw: Any) -> bool:
    """After a COMMIT or ROLLBACK that succeeded: still open, and no transaction left on it
    (what asyncpg last heard from the server)."""
    return not raw.is_closed() and not raw.is_in_transaction()


def _refused(exc: BaseException) -> bool:
    """asyncpg's own refusal of a statement (client side), as opposed to a server error."""
    return isinstance(exc, InterfaceError | InternalClientError)


def _lost(exc: BaseException) -> ConnectionLost:
    return ConnectionLost(f"connection lost: {type(exc).__name__}: {exc}")


async def _begin(
    engine: AsyncEngine, lot: _ParkingLot, tenant: TenantSchema, *, timeout: float, read_only: bool
) -> PoolProxiedConnection:
    """A connection with this transaction's BEGIN and pin done, in one round trip. When the
    connection turns out to be one the server had dropped, nothing of the request has run
    yet: it is discarded with its generation and the BEGIN goes once more to a fresh one."""
    for attempt in range(2):
        pooled = lot.take()
        owes_commit = pooled is not None
        if pooled is None:
            pooled = await _checkout(engine)
        raw = _driver(pooled)
        begin = begin_pinned_sql(tenant, read_only=read_only)
        try:
            if owes_commit:
                begin = "COMMIT; " + begin  # the parked read-only transaction ends here
            elif raw.is_in_transaction():  # never inherit someone else's transaction
                await raw.execute("ROLLBACK", timeout=timeout)
            await raw.execute(begin, timeout=timeout)
        except BaseException as exc:
            if not raw.is_closed():
                await greenlet_spawn(pooled.invalidate)
                if isinstance(exc, InvalidParameterValueError):
                    # The tenant's role is gone: deleted while this replica's registry
                    # entry (at most about a second behind) still had it.
                    raise TenantNotFoundForToken("The token's tenant does not exist.") from exc
                raise
            await _discard_dead(engine, pooled)
            if attempt == 0 and isinstance(exc, Exception):
                continue
            if _refused(exc):
                raise _lost(exc) from exc
            raise
        return pooled
    raise AssertionError("unreachable")
