"""The admin audit log: who did what to which tenant, recorded in the change's transaction.

`record` is the one way to write an event: call it with the connection of the transaction
that makes the change, so the event and the change commit (or roll back) together. Actions
are `tenant.<verb>`: created, updated, suspended, resumed, deleted, restored, purged, moved,
exported, imported.
"""

from __future__ import annotations

import getpass
import uuid
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.core.context import request_id_var
from app.db.repositories import admin_audit as repo
from app.db.repositories.admin_audit import AdminAuditEventRecord as AdminAuditEventRecord
from app.services.pagination import cut_page, decode_cursor

# The actor of a change made by code that has no caller to name (a script, a test).
SYSTEM_ACTOR = "system"


class AuditedTenant(Protocol):
    """What an event names of its tenant (a TenantRecord has it)."""

    @property
    def id(self) -> uuid.UUID: ...

    @property
    def slug(self) -> str: ...


def cli_actor() -> str:
    """The actor of a `tessera` command: `cli:<operating-system user>`."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        user = "unknown"
    return f"cli:{user}"


async def record(
    conn: AsyncConnection,
    *,
    actor: str,
    action: str,
    tenant: AuditedTenant | None,
    changes: dict[str, Any] | None = None,
) -> AdminAuditEventRecord:
    """Record one admin action in the transaction of `conn`, with the request's id (None
    outside a request). `changes` is JSON: for an update, `{field: {"from": .., "to": ..}}`."""
    return await repo.insert_event(
        conn,
        actor=actor,
        action=action,
        tenant_id=None if tenant is None else tenant.id,
        tenant_slug=None if tenant is None else tenant.slug,
        request_id=request_id_var.get(),
        changes=changes or {},
    )


async def record_done(
    engine: AsyncEngine,
    *,
    actor: str,
    action: str,
    tenant: AuditedTenant,
    changes: dict[str, Any] | None = None,
) -> None:
    """Record an admin action that committed by itself (a Citus move, an export's snapshot)
    in a transaction of its own, once it is done."""
    async with engine.begin() as conn:
        await record(conn, actor=actor, action=action, tenant=tenant, changes=changes)


async def list_events(
    engine: AsyncEngine, *, tenant_slug: str | None, limit: int, cursor: str | None
) -> tuple[list[AdminAuditEventRecord], str | None]:
    after = None if cursor is None else decode_cursor(cursor)
    async with engine.connect() as conn:
        events = await repo.list_page(conn, limit=limit + 1, tenant_slug=tenant_slug, after=after)
    return cut_page(events, limit, lambda event: (event.at, event.id))
