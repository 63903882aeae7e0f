"""Queries on a tenant's `audit_events` table."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select

from app.db.executor import Executor
from app.db.models.tenant import audit_events
from app.db.repositories._keyset import older_than
from app.db.repositories._records import RowRecord


@dataclass(frozen=True, slots=True)
class AuditEventRecord(RowRecord):
    id: uuid.UUID
    at: datetime
    actor: str
    action: str
    resource_type: str
    resource_id: uuid.UUID
    request_id: str | None


async def insert_event(conn: Executor, event: AuditEventRecord) -> None:
    await conn.execute(
        insert(audit_events).values(
            id=event.id,
            at=event.at,
            actor=event.actor,
            action=event.action,
            resource_type=event.resource_type,
            resource_id=event.resource_id,
            request_id=event.request_id,
        )
    )


async def list_events(
    conn: Executor, *, limit: int, after: tuple[datetime, uuid.UUID] | None
) -> list[AuditEventRecord]:
    query = select(audit_events)
    if after is not None:
        query = query.where(older_than(audit_events.c.at, audit_events.c.id, after))
    query = query.order_by(audit_events.c.at.desc(), audit_events.c.id.desc()).limit(limit)
    return [AuditEventRecord.from_row(row) for row in (await conn.execute(query)).all()]
