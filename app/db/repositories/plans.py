"""Queries on the plans (`platform.plans`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, exists, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.models.shared import plans, tenants
from app.db.repositories._records import RowRecord

# A plan's limits, in the order the API shows them.
LIMITS = (
    "rate_limit",
    "max_concurrent_transactions",
    "statement_timeout_ms",
    "max_projects",
    "max_tasks",
    "max_storage_bytes",
)


@dataclass(frozen=True, slots=True)
class PlanRecord(RowRecord):
    name: str
    rate_limit: str | None
    max_concurrent_transactions: int | None
    statement_timeout_ms: int | None
    max_projects: int | None
    max_tasks: int | None
    max_storage_bytes: int | None
    created_at: datetime
    updated_at: datetime


async def insert_plan(conn: AsyncConnection, **values: Any) -> PlanRecord:
    row = (await conn.execute(insert(plans).values(**values).returning(plans))).one()
    return PlanRecord.from_row(row)


async def get_plan(conn: AsyncConnection, name: str) -> PlanRecord | None:
    row = (await conn.execute(select(plans).where(plans.c.name == name))).one_or_none()
    return PlanRecord.from_row(row) if row else None


async def list_plans(conn: AsyncConnection) -> list[PlanRecord]:
    """Every plan, by name: a handful, never a page's worth."""
    rows = (await conn.execute(select(plans).order_by(plans.c.name))).all()
    return [PlanRecord.from_row(row) for row in rows]


async def update_plan(conn: AsyncConnection, name: str, **values: Any) -> PlanRecord | None:
    row = (
        await conn.execute(
            update(plans)
            .where(plans.c.name == name)
            .values(**values, updated_at=func.now())
            .returning(plans)
        )
    ).one_or_none()
    return PlanRecord.from_row(row) if row else None


async def in_use(conn: AsyncConnection, name: str) -> bool:
    return bool(await conn.scalar(select(exists().where(tenants.c.plan == name))))


async def delete_plan(conn: AsyncConnection, name: str) -> bool:
    """Delete the plan; False when there was none. The foreign key of platform.tenants
    refuses it while a tenant names it (the caller checks first, under a lock)."""
    result = await conn.execute(delete(plans).where(plans.c.name == name).returning(plans.c.name))
    return result.one_or_none() is not None


async def lock_plan(conn: AsyncConnection, name: str) -> PlanRecord | None:
    """The plan, locked FOR UPDATE: a tenant create or update naming it waits (its foreign
    key check takes KEY SHARE), so "not in use" stays true until the delete commits."""
    query = select(plans).where(plans.c.name == name).with_for_update()
    row = (await conn.execute(query)).one_or_none()
    return PlanRecord.from_row(row) if row else None
