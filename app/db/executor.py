"""The executor: SQLAlchemy Core statements compiled once and run on a raw asyncpg connection.

SQLAlchemy builds every statement (models, Core expressions) and owns the pool; this module
only executes. Per statement it costs a cache-key lookup and asyncpg's own prepared
statement, instead of SQLAlchemy's execution context, result machinery and greenlet
bridge (measured: 149 µs against 371 µs of CPU for BEGIN + pin + one read + COMMIT; see
docs/decisions/0008-tenant-session-fast-path.md). Repositories import only this module:
how a connection is found, pinned and returned is app/db/pool.py's and app/db/tenancy.py's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

Processor = Callable[[Any], Any] | None


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

    def __init__(
        self,
        raw: Any,
        cache: StatementCache,
        timeout: float,
        *,
        opened_with: tuple[str, str] | None = None,
    ) -> None:
        self._raw = raw  # asyncpg.Connection
        self._cache = cache
        self._timeout = timeout
        # The statement sent in the BEGIN's round trip, and its command status (`at_begin`).
        self.opened_with = opened_with
        self.with_commit: list[str] = []  # sent before the COMMIT, in its round trip

    def commit_sql(self) -> str:
        """COMMIT, after the statements that ride with it (`at_commit`)."""
        return "; ".join([*self.with_commit, "COMMIT"])

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


async def at_begin(conn: Executor, sql: str) -> int:
    """The rows `sql` changed, a statement run as the transaction's first after the pin: on
    the request path, when the transaction was opened with it
    (`TenantConnections.transaction(first=sql)`), it went in the BEGIN's round trip and its
    command status is already here; else it is sent now, in a round trip of its own (the
    simple protocol, as with the BEGIN), or on a SQLAlchemy connection (CLI, tests) run at
    once. `sql` carries its values inline, built as for `at_commit`."""
    if isinstance(conn, TenantSession):
        opened = conn.opened_with
        if opened is not None and opened[0] == sql:
            conn.opened_with = None  # answered once: a second call runs it again
            return rows_of(opened[1])
        return rows_of(await conn._raw.execute(sql, timeout=conn._timeout))  # noqa: SLF001
    result = await conn.exec_driver_sql(sql)  # type: ignore[attr-defined]
    return int(result.rowcount)


def rows_of(status: str) -> int:
    """The row count of a command status ("INSERT 0 1", "UPDATE 3"; 0 for one without)."""
    count = status.rsplit(" ", 1)[-1]
    return int(count) if count.isdigit() else 0


async def at_commit(conn: Executor, sql: str) -> None:
    """Run `sql`, a statement whose answer nobody reads, as the transaction's last one: on the
    request path it goes in the COMMIT's round trip (PostgreSQL's simple protocol runs the
    two in order and stops at an error, so a failing statement leaves the transaction
    uncommitted, and the request fails as for a failed COMMIT); on a SQLAlchemy connection
    (CLI, tests) it runs at once. `sql` carries its values inline, so it must be built only
    from values rendered by `sql_text` and `sql_bytes` (or ints)."""
    if isinstance(conn, TenantSession):
        conn.with_commit.append(sql)
    else:
        await conn.exec_driver_sql(sql)  # type: ignore[attr-defined]


def sql_text(value: str) -> str:
    """`value` as a SQL string literal that nothing in it can end: an escape string (E'...')
    with every backslash and quote doubled, so it reads the same whatever
    `standard_conforming_strings` says (the client encoding is UTF-8, where no character
    hides a quote or a backslash in its bytes). NUL, which text cannot hold, is refused.
    (A hex literal decoded by `convert_from` would need no escaping, but the planner will
    not look it up in an index: the save's UPDATE then read the whole table.)"""
    if "\x00" in value:
        raise ValueError("a SQL text value cannot hold NUL")
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def sql_bytes(value: bytes) -> str:
    """`value` as a SQL bytea literal: hex (only 0-9 and a-f between the quotes), in an
    escape string, so it reads the same whatever `standard_conforming_strings` says."""
    return f"E'\\\\x{value.hex()}'::bytea"
