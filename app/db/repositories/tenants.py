"""Queries on the tenant registry (`platform.tenants`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, Row, Uuid, delete, func, insert, literal, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.models.shared import tenants


@dataclass(frozen=True, slots=True)
class TenantRecord:
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

    @classmethod
    def from_row(cls, row: Row[Any]) -> TenantRecord:
        return cls(**row._mapping)


async def insert_tenant(conn: AsyncConnection, **values: Any) -> TenantRecord:
    row = (await conn.execute(insert(tenants).values(**values).returning(tenants))).one()
    return TenantRecord.from_row(row)


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


async def delete_tenant(conn: AsyncConnection, slug: str) -> None:
    await conn.execute(delete(tenants).where(tenants.c.slug == slug))
