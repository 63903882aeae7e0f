"""Where a tenant lives on a Citus cluster, and moving it to another worker."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.core.errors import Conflict, UnprocessableEntity
from app.db import citus
from app.services import admin_audit
from app.services.admin_audit import SYSTEM_ACTOR
from app.services.tenants import get_tenant

logger = logging.getLogger("tessera.tenants")


class NotDistributed(Conflict):
    code = "not_distributed"


class UnknownNode(UnprocessableEntity):
    code = "unknown_node"


class MoveFailed(Conflict):
    code = "move_failed"


@dataclass(frozen=True, slots=True)
class TenantPlacement:
    slug: str
    schema: str
    node: str
    previous_node: str


async def move_tenant(
    engine: AsyncEngine,
    settings: Settings,
    slug: str,
    host: str,
    port: int,
    *,
    actor: str = SYSTEM_ACTOR,
) -> TenantPlacement:
    """Move a tenant's schema to another Citus worker with `citus_schema_move`.

    The tenant keeps serving: reads go on throughout, and its writes wait until the copy is
    done and then land on the new worker (see `citus.move_schema`).
    Nothing changes in the registry: the schema keeps its name, and the coordinator routes
    every query to wherever it lives. The admin event is recorded once the move is done
    (`citus_schema_move` commits by itself, so it cannot share the event's transaction)."""
    record = await get_tenant(engine, slug)
    target = citus.Node(host, port)
    async with citus.admin_connection(settings) as conn:
        if not await citus.is_distributed(conn, record.schema):
            raise NotDistributed(
                f"Tenant {slug!r} is not on a distributed schema: this database is not a "
                "Citus cluster with schema-based sharding, so there is no worker to move it to."
            )
        workers = await citus.worker_nodes(conn)
        if target not in workers:
            message = f"{target} is not an active worker; the workers are: " + (
                citus.nodes_text(workers) or "none"
            )
            raise UnknownNode(
                message,
                extra={
                    "errors": [{"loc": ["body", "node"], "msg": message, "type": "unknown_node"}]
                },
            )
        before = await citus.schema_nodes(conn, record.schema)
        if before != [target]:
            try:
                await citus.move_schema(conn, record.schema, target)
            except asyncpg.PostgresError as exc:
                logger.warning("tenant move failed", extra={"tenant": slug}, exc_info=exc)
                raise MoveFailed(
                    f"Citus did not move tenant {slug!r}; it stays where it was "
                    f"({citus.nodes_text(before)}): {exc.args[0] if exc.args else exc}"
                ) from exc
    moved = {"node": {"from": citus.nodes_text(before), "to": str(target)}}
    await admin_audit.record_done(
        engine,
        actor=actor,
        action="tenant.moved",
        tenant=record,
        changes=moved if before != [target] else {},
    )
    return TenantPlacement(
        slug=slug, schema=record.schema, node=str(target), previous_node=citus.nodes_text(before)
    )
