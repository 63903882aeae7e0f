"""Queries on the tenant registry (`platform.tenants`)."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    DateTime,
    Interval,
    Uuid,
    delete,
    func,
    insert,
    literal,
    select,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db.models.shared import plans, tenant_usage, tenants
from app.db.repositories._records import RowRecord


@dataclass(frozen=True, slots=True)
class TenantRecord(RowRecord):
    id: uuid.UUID
    slug: str
    name: str
    plan: str
    status: str
    rate_limit: str | None
    schema: str
    db_role: str
    schema_version: str | None
    created_at: datetime
    updated_at: datetime
    purge_after: datetime | None


async def insert_tenant(conn: AsyncConnection, **values: Any) -> TenantRecord:
    row = (await conn.execute(insert(tenants).values(**values).returning(tenants))).one()
    return TenantRecord.from_row(row)


@dataclass(frozen=True, slots=True)
class PlanLimits:
    """What a tenant's plan sets (None: the server's default, or no quota)."""

    rate_limit: str | None = None
    max_concurrent_transactions: int | None = None
    statement_timeout_ms: int | None = None
    max_projects: int | None = None
    max_tasks: int | None = None
    max_storage_bytes: int | None = None


_PLAN_LIMITS = [plans.c[name].label(f"plan_{name}") for name in PlanLimits.__slots__]
_WITH_PLAN = select(
    tenants, *_PLAN_LIMITS, tenant_usage.c.storage_bytes.label("usage_storage_bytes")
).select_from(
    tenants.join(plans, plans.c.name == tenants.c.plan).outerjoin(
        tenant_usage, tenant_usage.c.tenant_id == tenants.c.id
    )
)


async def get_with_plan(
    conn: AsyncConnection, slug: str
) -> tuple[TenantRecord, PlanLimits, int | None] | None:
    """The tenant, its plan's limits and its kept storage figure (None before the first
    usage refresh), in one query: what the registry loads."""
    row = (await conn.execute(_WITH_PLAN.where(tenants.c.slug == slug))).one_or_none()
    if row is None:
        return None
    values = row._mapping
    record = TenantRecord(**{column.name: values[column.name] for column in tenants.c})
    limits = PlanLimits(**{name: values[f"plan_{name}"] for name in PlanLimits.__slots__})
    return record, limits, values["usage_storage_bytes"]


async def get_by_slug(
    conn: AsyncConnection, slug: str, *, for_update: bool = False
) -> TenantRecord | None:
    query = select(tenants).where(tenants.c.slug == slug)
    if for_update:
        query = query.with_for_update()
    row = (await conn.execute(query)).one_or_none()
    return TenantRecord.from_row(row) if row else None


async def list_page(
    conn: AsyncConnection,
    *,
    limit: int,
    status: str | None,
    after: tuple[datetime, uuid.UUID] | None,
) -> list[TenantRecord]:
    query = select(tenants).where(tenants.c.status != "provisioning")
    if status is not None:
        query = query.where(tenants.c.status == status)
    if after is not None:
        query = query.where(
            tuple_(tenants.c.created_at, tenants.c.id)
            < tuple_(literal(after[0], DateTime(timezone=True)), literal(after[1], Uuid))
        )
    query = query.order_by(tenants.c.created_at.desc(), tenants.c.id.desc()).limit(limit)
    return [TenantRecord.from_row(row) for row in (await conn.execute(query)).all()]


async def update_tenant(conn: AsyncConnection, slug: str, **values: Any) -> TenantRecord | None:
    row = (
        await conn.execute(
            update(tenants)
            .where(tenants.c.slug == slug, tenants.c.status != "provisioning")
            .values(**values, updated_at=func.now())
            .returning(tenants)
        )
    ).one_or_none()
    return TenantRecord.from_row(row) if row else None


async def update_tenant_any_status(conn: AsyncConnection, slug: str, **values: Any) -> TenantRecord:
    """Provisioning's own update, the one that may see a `provisioning` row."""
    row = (
        await conn.execute(
            update(tenants)
            .where(tenants.c.slug == slug)
            .values(**values, updated_at=func.now())
            .returning(tenants)
        )
    ).one()
    return TenantRecord.from_row(row)


async def mark_deleted(conn: AsyncConnection, slug: str, grace: timedelta) -> TenantRecord:
    """Status `deleted`, purgeable `grace` from now (the database's clock, as purge reads)."""
    row = (
        await conn.execute(
            update(tenants)
            .where(tenants.c.slug == slug)
            .values(
                status="deleted",
                purge_after=func.now() + literal(grace, Interval),
                updated_at=func.now(),
            )
            .returning(tenants)
        )
    ).one()
    return TenantRecord.from_row(row)


async def claim_purgeable(
    conn: AsyncConnection, *, skip: Collection[uuid.UUID]
) -> TenantRecord | None:
    """One deleted tenant past its grace period, locked for this transaction; rows another
    transaction holds (a purge on another host, a restore) are skipped, not waited for."""
    query = (
        select(tenants)
        .where(tenants.c.status == "deleted", tenants.c.purge_after <= func.now())
        .order_by(tenants.c.purge_after)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    if skip:
        query = query.where(tenants.c.id.not_in(list(skip)))
    row = (await conn.execute(query)).one_or_none()
    return TenantRecord.from_row(row) if row else None


async def delete_tenant(conn: AsyncConnection, slug: str) -> None:
    await conn.execute(delete(tenants).where(tenants.c.slug == slug))


async def count_by_status(engine: AsyncEngine, head: str | None) -> list[tuple[str, int, int]]:
    """Per status: how many tenants, and how many of them are not at `head` (0 when None)."""
    behind = (
        func.count().filter(tenants.c.schema_version.is_distinct_from(head))
        if head is not None
        else literal(0)
    )
    query = select(tenants.c.status, func.count(), behind).group_by(tenants.c.status)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [(str(status), int(count), int(late)) for status, count, late in rows]
