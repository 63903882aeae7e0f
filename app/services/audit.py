"""Audit trail: one event per create, update and delete, written in the change's transaction."""

from __future__ import annotations

import uuid
from datetime import datetime

from app.core.context import request_id_var
from app.db.repositories import audit as repo
from app.db.repositories.audit import AuditEventRecord
from app.db.session import Executor
from app.services.pagination import cut_page, decode_cursor


async def record_event(
    conn: Executor,
    *,
    actor: str,
    action: str,
    resource_type: str,
    resource_id: uuid.UUID,
    at: datetime,
) -> None:
    """Same connection, same transaction as the change: both commit or neither does."""
    await repo.insert_event(
        conn,
        AuditEventRecord(
            id=uuid.uuid4(),
            at=at,
            actor=actor,
            action=action,
            resource_type=resource_type,
            resource_id=resource_id,
            request_id=request_id_var.get(),
        ),
    )


async def list_events(
    conn: Executor, *, limit: int, cursor: str | None
) -> tuple[list[AuditEventRecord], str | None]:
    after = None if cursor is None else decode_cursor(cursor)
    events = await repo.list_events(conn, limit=limit + 1, after=after)
    return cut_page(events, limit, lambda event: (event.at, event.id))
