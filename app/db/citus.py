"""What Tessera does differently on a Citus cluster with schema-based sharding.

Each tenant schema becomes a distributed schema that Citus places on one worker. Only three
things differ from plain PostgreSQL: the shared schemas must stay on the coordinator, DDL
scripts must not carry statements that Citus forwards to the workers as the client's whole
query string, and a tenant can be moved to another worker (`citus_schema_move`).
"""

from __future__ import annotations

import re
import weakref
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.config import Settings

# Run before CREATE SCHEMA in the same transaction: with schema-based sharding on, Citus makes
# every new schema (and an existing one named by CREATE SCHEMA IF NOT EXISTS) distributed,
# and the registry must stay on the coordinator (its change-notification trigger, its
# NOTIFY, and the joins of the admin API). On plain PostgreSQL this sets an unknown custom
# setting for the transaction, which changes nothing.
KEEP_SCHEMA_LOCAL_SQL = "SELECT set_config('citus.enable_schema_based_sharding', 'off', true)"

_IS_CITUS_SQL = text("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')")

_on_citus: weakref.WeakKeyDictionary[Engine, bool] = weakref.WeakKeyDictionary()


async def is_citus(conn: AsyncConnection) -> bool:
    """Whether the database behind `conn` is a Citus coordinator; asked once per engine."""
    engine = conn.sync_engine
    known = _on_citus.get(engine)
    if known is None:
        known = bool(await conn.scalar(_IS_CITUS_SQL))
        _on_citus[engine] = known
    return known


# Statements Citus deparses (or that touch no distributed DDL), so they may share a
# multi-statement script. Anything else, CREATE INDEX, DROP INDEX and ALTER TABLE among
# them, Citus may forward to the workers as the whole query string it received, which fails
# ("cannot insert multiple commands into a prepared statement"): it is sent on its own.
_BATCHABLE = re.compile(
    r"(create\s+(table|schema|role)|grant|revoke|alter\s+default\s+privileges"
    r"|select|insert|update|delete)\b",
    re.IGNORECASE,
)
_LEADING_COMMENTS = re.compile(r"^(\s*--[^\n]*\n|\s*/\*.*?\*/|\s+)*", re.DOTALL)


def batches_for_citus(statements: Iterable[str]) -> list[list[str]]:
    """Split a DDL script into the scripts a Citus coordinator accepts: runs of statements
    it deparses travel together, every other statement alone, all in the same order."""
    out: list[list[str]] = []
    run: list[str] = []
    for statement in statements:
        body = _LEADING_COMMENTS.sub("", statement, count=1)
        if _BATCHABLE.match(body):
            run.append(statement)
            continue
        if run:
            out.append(run)
            run = []
        out.append([statement])
    if run:
        out.append(run)
    return out


# --- where tenant schemas live, and moving one --------------------------------------------

_SCHEMA_NODES_SQL = """
SELECT DISTINCT n.nodename, n.nodeport
FROM pg_dist_schema s
JOIN pg_dist_partition p ON p.colocationid = s.colocationid
JOIN pg_dist_shard sh ON sh.logicalrelid = p.logicalrelid
JOIN pg_dist_placement pl ON pl.shardid = sh.shardid
JOIN pg_dist_node n ON n.groupid = pl.groupid
WHERE s.schemaid = to_regnamespace($1)
ORDER BY 1, 2
"""

_DISTRIBUTED_SQL = (
    "SELECT EXISTS (SELECT 1 FROM pg_dist_schema WHERE schemaid = to_regnamespace($1))"
)

_WORKERS_SQL = """
SELECT nodename, nodeport FROM pg_dist_node
WHERE noderole = 'primary' AND isactive AND shouldhaveshards AND groupid <> 0
ORDER BY nodename, nodeport
"""


@dataclass(frozen=True, slots=True, order=True)
class Node:
    """A Citus node as `citus_schema_move` names it."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@asynccontextmanager
async def admin_connection(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """A connection of its own for cluster administration: outside the pool and without
    the pool's command timeout, since a move takes as long as copying the tenant's data."""
    conn = await asyncpg.connect(
        settings.dsn,
        timeout=settings.db_connect_timeout_seconds,
        statement_cache_size=0,
        server_settings={"application_name": "tessera-admin"},
    )
    try:
        yield conn
    finally:
        await conn.close()


async def is_distributed(conn: asyncpg.Connection, schema: str) -> bool:
    """Whether `schema` is a distributed schema (false on plain PostgreSQL)."""
    has_citus = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')"
    )
    return bool(has_citus) and bool(await conn.fetchval(_DISTRIBUTED_SQL, schema))


async def schema_nodes(conn: asyncpg.Connection, schema: str) -> list[Node]:
    """The nodes holding the shards of a distributed schema (one, unless a move failed)."""
    rows = await conn.fetch(_SCHEMA_NODES_SQL, schema)
    return [Node(row["nodename"], row["nodeport"]) for row in rows]


async def worker_nodes(conn: asyncpg.Connection) -> list[Node]:
    """The active workers that take shards: where a tenant schema may be moved."""
    rows = await conn.fetch(_WORKERS_SQL)
    return [Node(row["nodename"], row["nodeport"]) for row in rows]


async def move_schema(conn: asyncpg.Connection, schema: str, target: Node) -> None:
    """Move a distributed schema's shards to `target`, with writes to it held back.

    `block_writes`: Citus locks the schema's shards against writes, copies them, switches
    the placement and commits; writes wait for that, reads go on throughout. Citus's
    default (`auto`) copies through logical replication and holds writes back only at the
    switch-over, but under Tessera's write load it lost writes that had been acknowledged
    in the last moments before the switch-over (Citus 13.2.2, docs/citus.md), so it is not
    used. Runs in autocommit, on a connection of its own."""
    await conn.execute(
        "SELECT citus_schema_move(to_regnamespace($1), $2::text, $3::integer, "
        "'block_writes'::citus.shard_transfer_mode)",
        schema,
        target.host,
        target.port,
    )


def nodes_text(nodes: Sequence[Node]) -> str:
    return ", ".join(str(node) for node in nodes)
