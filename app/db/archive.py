"""COPY of a tenant's tables: out of one consistent snapshot, into a tenant being provisioned.

Rows travel in PostgreSQL's COPY text format, streamed chunk by chunk through asyncpg's
COPY protocol, so a table of any size costs the same memory (decision 0024).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db.migrate import current_tenant_revision
from app.db.tenancy import TenantSchema, pin_tenant

# One table's COPY may take long (a large tenant, a slow upload): the pool's per-command
# timeout is for requests, not for this.
COPY_TIMEOUT_SECONDS = 3600.0

# The tables of the schema the transaction is pinned to (its search_path), with the columns
# COPY reads and writes (not generated ones), and the foreign keys between them. Every step
# is an index lookup, so the cost follows the schema's few tables, never the catalog's size:
# - the schema's relations are found through pg_depend (every table depends on its schema;
#   pg_depend_reference_index leads with the referenced object), not by filtering pg_class
#   on relnamespace, which no index of pg_class leads with: that read all of pg_class
#   (250,000 rows at 10,000 tenants: 50-65 ms), and with the catalog statistics of a young
#   database (pg_class taken for a few hundred rows until autovacuum analyzes it) its plan
#   cost passed jit_above_cost, and JIT compiling it added 160 ms more to every export;
# - each table's columns are read in a LATERAL subquery, by pg_attribute's index on the
#   table: as a join, the planner, with the same stale statistics, hashed the whole of
#   pg_attribute (47 ms at 3,000 tenants, growing with them) to find a few dozen rows.
# The relnamespace test on the pg_class row keeps the answer exactly the schema's tables.
_TABLES_SQL = text(
    """
    SELECT c.relname AS name,
           cols.columns,
           coalesce((SELECT array_agg(DISTINCT p.relname::text)
                     FROM pg_constraint f JOIN pg_class p ON p.oid = f.confrelid
                     WHERE f.conrelid = c.oid AND f.contype = 'f' AND f.confrelid <> c.oid),
                    '{}') AS parents
    FROM pg_namespace n
    JOIN pg_depend d ON d.refclassid = 'pg_namespace'::regclass AND d.refobjid = n.oid
                    AND d.refobjsubid = 0 AND d.classid = 'pg_class'::regclass
                    AND d.objsubid = 0 AND d.deptype = 'n'
    JOIN pg_class c ON c.oid = d.objid AND c.relnamespace = n.oid
    CROSS JOIN LATERAL (
        SELECT array_agg(a.attname::text ORDER BY a.attnum) AS columns
        FROM pg_attribute a
        WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
          AND a.attgenerated = ''
    ) cols
    WHERE n.nspname = current_schema()
      AND c.relkind IN ('r', 'p') AND c.relname <> 'alembic_version'
    """
)


@dataclass(frozen=True, slots=True)
class TableShape:
    """A tenant table as COPY sees it: its name and its columns, in order."""

    name: str
    columns: tuple[str, ...]


class CopyRejected(Exception):
    """PostgreSQL refused the rows given to COPY FROM (malformed, or breaking a constraint)."""


async def tenant_tables(conn: AsyncConnection) -> list[TableShape]:
    """The pinned schema's tables, parents before the tables that reference them (the order
    they load in: foreign keys hold at every row), ties by name."""
    rows = (await conn.execute(_TABLES_SQL)).all()
    parents = {row.name: set(row.parents) for row in rows}
    columns = {row.name: tuple(row.columns) for row in rows}
    ordered: list[TableShape] = []
    placed: set[str] = set()
    while len(placed) < len(parents):
        ready = sorted(n for n, p in parents.items() if n not in placed and p <= placed)
        if not ready:  # a cycle of foreign keys: none of this schema's, but never loop
            ready = sorted(n for n in parents if n not in placed)
        for name in ready:
            ordered.append(TableShape(name, columns[name]))
            placed.add(name)
    return ordered


async def _driver(conn: AsyncConnection) -> asyncpg.Connection:
    raw = (await conn.get_raw_connection()).dbapi_connection
    driver: asyncpg.Connection = raw.driver_connection  # type: ignore[union-attr]
    return driver


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A tenant's data as of one instant: every read inside sees the same committed state."""

    conn: AsyncConnection
    driver: asyncpg.Connection

    async def revision(self) -> str | None:
        return await current_tenant_revision(self.conn)

    async def tables(self) -> list[TableShape]:
        return await tenant_tables(self.conn)

    async def copy_out(self, table: TableShape, write: Callable[[bytes], Awaitable[None]]) -> int:
        """Stream the table's rows to `write` in COPY text format; the rows copied."""
        status = await self.driver.copy_from_table(
            table.name,
            columns=list(table.columns),
            output=write,
            format="text",
            timeout=COPY_TIMEOUT_SECONDS,
        )
        return _copied(status)


@asynccontextmanager
async def tenant_snapshot(engine: AsyncEngine, tenant: TenantSchema) -> AsyncIterator[Snapshot]:
    """One REPEATABLE READ READ ONLY transaction pinned to the tenant (its role, its schema):
    the tenant keeps serving meanwhile, and nothing it writes shows in the snapshot."""
    async with engine.connect() as plain:
        conn = await plain.execution_options(
            isolation_level="REPEATABLE READ", postgresql_readonly=True
        )
        async with conn.begin():
            await pin_tenant(conn, tenant)
            yield Snapshot(conn, await _driver(conn))


async def copy_in(conn: AsyncConnection, table: TableShape, source: AsyncIterable[bytes]) -> int:
    """COPY the rows `source` yields (COPY text format) into `table` of the schema the open
    transaction is pinned to; the rows loaded. PostgreSQL refusing them raises CopyRejected;
    an exception raised by `source` aborts the COPY and propagates as it is."""
    driver = await _driver(conn)
    try:
        status = await driver.copy_to_table(
            table.name,
            columns=list(table.columns),
            source=source,
            format="text",
            timeout=COPY_TIMEOUT_SECONDS,
        )
    except asyncpg.PostgresError as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise CopyRejected(f"table {table.name}: {first_line[:300]}") from exc
    return _copied(status)


def _copied(status: str) -> int:
    """The row count of a COPY's command tag ("COPY 42")."""
    return int(status.rsplit(" ", 1)[-1])
