"""Audit trail: one event per create, update and delete, written in the change's own statement."""

from __future__ import annotations

import uuid
from datetime import datetime

from app.core.context import request_id_var
from app.db.executor import Executor
from app.db.repositories import audit as repo
from app.db.repositories.audit import AuditEntry, AuditEventRecord
from app.services.pagination import cut_page, decode_cursor


def entry(*, actor: str, action: str, at: datetime) -> AuditEntry:
    """The audit event of a change, for the repository to write in the change's own
    statement (app/db/repositories/audit.py::with_event), with the request's id."""
    return AuditEntry(uuid.uuid4(), at, actor, action, request_id_var.get())


async def list_events(
    conn: Executor, *, limit: int, cursor: str | None
) -> tuple[list[AuditEventRecord], str | None]:
    after = None if cursor is None else decode_cursor(cursor)
    events = await repo.list_events(conn, limit=limit + 1, after=after)
    return cut_page(events, limit, lambda event: (event.at, event.id))
