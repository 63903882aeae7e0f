"""A tenant's end: deletion with a grace period, restore, and purge (decision 0023).

    active <-> suspended --DELETE--> deleted --restore--> suspended
                                     deleted --purge (past purge_after, or --now)--> gone

A deleted tenant keeps its row, schema, data and role; its tokens are refused and its slug
stays taken. Every step locks the tenant's row, checks its status and records the admin
action in one transaction, so a restore racing a purge ends as one or the other, never half:
whichever takes the row first wins, and the other finds a purged tenant (404) or one that is
no longer deleted (409 `tenant_not_deleted`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.core.errors import Conflict
from app.db import tenancy
from app.db.repositories import tenants as repo
from app.db.tenancy import TenantSchema
from app.services import admin_audit
from app.services.admin_audit import SYSTEM_ACTOR
from app.services.tenants import (
    TenantActive,
    TenantDeleted,
    TenantRecord,
    get_or_404,
)


class TenantNotDeleted(Conflict):
    """409: a restore or an immediate purge of a tenant that is not (or no longer) deleted."""

    code = "tenant_not_deleted"


@dataclass(frozen=True, slots=True)
class Deletion:
    """A DELETE's outcome: the tenant as it was left, and whether it is already purged
    (a grace period of 0)."""

    tenant: TenantRecord
    purged: bool


@dataclass(slots=True)
class PurgeReport:
    purged: list[TenantRecord] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # slug -> the error, one line


def _stamp(record: TenantRecord) -> str | None:
    return None if record.purge_after is None else record.purge_after.isoformat()


async def delete_tenant(
    engine: AsyncEngine, slug: str, *, grace_seconds: int, actor: str = SYSTEM_ACTOR
) -> Deletion:
    """Delete a suspended tenant: `deleted` until `grace_seconds` from now, or, with 0,
    purged in the same transaction (schema, data, role and registry row)."""
    async with engine.begin() as conn:
        before = await get_or_404(conn, slug, for_update=True)
        if before.status == "deleted":
            raise TenantDeleted(
                f"Tenant {slug!r} is already deleted (purged after {_stamp(before)})."
            )
        if before.status != "suspended":
            raise TenantActive(f"Tenant {slug!r} is active; suspend it before deleting it.")
        record = await repo.mark_deleted(conn, slug, timedelta(seconds=grace_seconds))
        await admin_audit.record(
            conn,
            actor=actor,
            action="tenant.deleted",
            tenant=record,
            changes={
                "status": {"from": before.status, "to": "deleted"},
                "purge_after": {"from": None, "to": _stamp(record)},
            },
        )
        if grace_seconds == 0:
            await _purge_locked(conn, record, actor=actor, reason="no grace period")
    return Deletion(tenant=record, purged=grace_seconds == 0)


async def restore_tenant(
    engine: AsyncEngine, slug: str, *, actor: str = SYSTEM_ACTOR
) -> TenantRecord:
    """Bring a deleted tenant back as suspended (resume it to open its API again)."""
    async with engine.begin() as conn:
        before = await get_or_404(conn, slug, for_update=True)
        if before.status != "deleted":
            raise TenantNotDeleted(f"Tenant {slug!r} is {before.status}, not deleted.")
        record = await repo.update_tenant(conn, slug, status="suspended", purge_after=None)
        assert record is not None  # the row is locked
        await admin_audit.record(
            conn,
            actor=actor,
            action="tenant.restored",
            tenant=record,
            changes={
                "status": {"from": "deleted", "to": "suspended"},
                "purge_after": {"from": _stamp(before), "to": None},
            },
        )
    return record


async def purge_due(engine: AsyncEngine, *, actor: str = SYSTEM_ACTOR) -> PurgeReport:
    """Purge every deleted tenant past its grace period, each in a transaction of its own.

    Safe from several hosts at once: each claims a row with SKIP LOCKED, so a tenant another
    purge (or a restore) holds is left to it. A tenant that fails is reported and left
    deleted, for the next run.
    """
    report = PurgeReport()
    failed_ids: set[uuid.UUID] = set()
    while True:
        record: TenantRecord | None = None
        try:
            async with engine.begin() as conn:
                record = await repo.claim_purgeable(conn, skip=failed_ids)
                if record is None:
                    return report
                await _purge_locked(conn, record, actor=actor, reason="grace period over")
        except SQLAlchemyError as exc:
            if record is None:
                raise
            failed_ids.add(record.id)
            message = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            report.failed[record.slug] = (message[0] if message else type(exc).__name__)[:300]
            continue
        report.purged.append(record)


async def purge_tenant_now(
    engine: AsyncEngine, slug: str, *, actor: str = SYSTEM_ACTOR
) -> TenantRecord:
    """An operator's override: purge one deleted tenant before its grace period ends.
    404 when there is no such tenant (or it is purged already), 409 `tenant_not_deleted`
    when it is not deleted."""
    async with engine.begin() as conn:
        record = await get_or_404(conn, slug, for_update=True)
        if record.status != "deleted":
            raise TenantNotDeleted(
                f"Tenant {slug!r} is {record.status}; only a deleted tenant can be purged."
            )
        await _purge_locked(conn, record, actor=actor, reason="purged now by an operator")
    return record


async def _purge_locked(
    conn: AsyncConnection, record: TenantRecord, *, actor: str, reason: str
) -> None:
    """Drop a deleted tenant whose row this transaction holds: schema with its data, role,
    registry row, and the admin event, all or nothing."""
    if record.status != "deleted":  # every caller checked; a purge must never see another
        raise TenantNotDeleted(f"Tenant {record.slug!r} is {record.status}, not deleted.")
    await tenancy.drop_tenant_objects(conn, TenantSchema(schema=record.schema, role=record.db_role))
    await repo.delete_tenant(conn, record.slug)
    await admin_audit.record(
        conn,
        actor=actor,
        action="tenant.purged",
        tenant=record,
        changes={"reason": reason, "purge_after": _stamp(record), "schema": record.schema},
    )
