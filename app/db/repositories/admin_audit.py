"""Queries on the admin audit log (`platform.admin_audit_events`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.models.shared import admin_audit_events
from app.db.repositories._keyset import older_than
from app.db.repositories._records import RowRecord


@dataclass(frozen=True, slots=True)
class AdminAuditEventRecord(RowRecord):
    id: uuid.UUID
    at: datetime
    actor: str
    action: str
    tenant_id: uuid.UUID | None
    tenant_slug: str | None
    request_id: str | None
    changes: dict[str, Any]


async def insert_event(
    conn: AsyncConnection,
    *,
    actor: str,
    action: str,
    tenant_id: uuid.UUID | None,
    tenant_slug: str | None,
    request_id: str | None,
    changes: dict[str, Any],
) -> AdminAuditEventRecord:
    # clock_timestamp(), not now(): two events of one transaction (a delete with no grace
    # records `deleted` then `purged`) keep their order.
    row = (
        await conn.execute(
            insert(admin_audit_events)
            .values(
                id=uuid.uuid4(),
                at=func.clock_timestamp(),
                actor=actor,
                action=action,
                tenant_id=tenant_id,
                tenant_slug=tenant_slug,
                request_id=request_id,
                changes=changes,
            )
            .returning(admin_audit_events)
        )
    ).one()
    return AdminAuditEventRecord.from_row(row)


async def list_page(
    conn: AsyncConnection,
    *,
    limit: int,
    tenant_slug: str | None,
    after: tuple[datetime, uuid.UUID] | None,
) -> list[AdminAuditEventRecord]:
    table = admin_audit_events
    query = select(table)
    if tenant_slug is not None:
        query = query.where(table.c.tenant_slug == tenant_slug)
    if after is not None:
        query = query.where(older_than(table.c.at, table.c.id, after))
    query = query.order_by(table.c.at.desc(), table.c.id.desc()).limit(limit)
    return [AdminAuditEventRecord.from_row(row) for row in (await conn.execute(query)).all()]
