"""Queries on a tenant's `audit_events` table."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Delete,
    Insert,
    Select,
    Text,
    Update,
    Uuid,
    bindparam,
    insert,
    literal,
    select,
)

from app.db.executor import Executor
from app.db.models.tenant import audit_events
from app.db.repositories._keyset import older_than
from app.db.repositories._records import RowRecord

ReturningDML = Insert | Update | Delete


@dataclass(frozen=True, slots=True)
class AuditEventRecord(RowRecord):
    id: uuid.UUID
    at: datetime
    actor: str
    action: str
    resource_type: str
    resource_id: uuid.UUID
    request_id: str | None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """The audit event a write records, all but the id of what it changed (which the write
    itself answers: see `with_event`)."""

    id: uuid.UUID
    at: datetime
    actor: str
    action: str
    request_id: str | None

    def params(self) -> dict[str, Any]:
        return {
            "event_id": self.id,
            "event_at": self.at,
            "event_actor": self.actor,
            "event_action": self.action,
            "event_request_id": self.request_id,
        }


def with_event(
    write: ReturningDML, resource_type: str, returning: Sequence[ColumnElement[Any]]
) -> Select[Any]:
    """`write` and the audit event of each row it changed, in one statement (a
    data-modifying CTE): both commit or neither does, and a write that matched no row
    records nothing. The statement answers `returning` of the changed rows; the event's
    values are bind parameters (AuditEntry.params)."""
    changed = write.returning(*returning).cte("changed")
    event = insert(audit_events).from_select(
        ["id", "at", "actor", "action", "resource_type", "resource_id", "request_id"],
        select(
            bindparam("event_id", type_=Uuid),
            bindparam("event_at", type_=DateTime(timezone=True)),
            bindparam("event_actor", type_=Text),
            bindparam("event_action", type_=Text),
            literal(resource_type, Text),
            changed.c.id,
            bindparam("event_request_id", type_=Text),
        ),
    )
    return select(changed).add_cte(event.cte("event"))


async def list_events(
    conn: Executor, *, limit: int, after: tuple[datetime, uuid.UUID] | None
) -> list[AuditEventRecord]:
    query = select(audit_events)
    if after is not None:
        query = query.where(older_than(audit_events.c.at, audit_events.c.id, after))
    query = query.order_by(audit_events.c.at.desc(), audit_events.c.id.desc()).limit(limit)
    return [AuditEventRecord.from_row(row) for row in (await conn.execute(query)).all()]
