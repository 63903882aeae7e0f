"""Queries on a tenant's `projects` table (through the transaction's pinned tenant schema)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import DateTime, bindparam, insert, select

from app.db.executor import Executor, prebuilt
from app.db.models.tenant import projects
from app.db.repositories._keyset import older_than
from app.db.repositories._records import RowRecord
from app.db.repositories._versioned import VersionedTable
from app.db.repositories.audit import AuditEntry, with_event


@dataclass(frozen=True, slots=True)
class ProjectRecord(RowRecord):
    id: uuid.UUID
    name: str
    description: str | None
    created_at: datetime
    updated_at: datetime
    version: int


_AT = bindparam("at", type_=DateTime(timezone=True))
_INSERT_PROJECT = prebuilt(
    with_event(
        insert(projects).values(
            id=bindparam("id"),
            name=bindparam("name"),
            description=bindparam("description"),
            created_at=_AT,
            updated_at=_AT,
        ),
        "project",
        list(projects.c),
    )
)


async def insert_project(
    conn: Executor,
    *,
    id: uuid.UUID,
    name: str,
    description: str | None,
    at: datetime,
    event: AuditEntry,
) -> ProjectRecord:
    """Insert the project and its audit event, in one statement."""
    params = {"id": id, "name": name, "description": description, "at": at, **event.params()}
    return ProjectRecord.from_row((await conn.execute(_INSERT_PROJECT, params)).one())


_GET_PROJECT = prebuilt(select(projects).where(projects.c.id == bindparam("project_id")))
_FIRST_PROJECTS = prebuilt(
    select(projects)
    .order_by(projects.c.created_at.desc(), projects.c.id.desc())
    .limit(bindparam("limit"))
)


async def get_project(conn: Executor, project_id: uuid.UUID) -> ProjectRecord | None:
    row = (await conn.execute(_GET_PROJECT, {"project_id": project_id})).one_or_none()
    return ProjectRecord.from_row(row) if row else None


async def list_projects(
    conn: Executor, *, limit: int, after: tuple[datetime, uuid.UUID] | None
) -> list[ProjectRecord]:
    if after is None:
        rows = (await conn.execute(_FIRST_PROJECTS, {"limit": limit})).all()
        return [ProjectRecord.from_row(row) for row in rows]
    query = (
        select(projects)
        .where(older_than(projects.c.created_at, projects.c.id, after))
        .order_by(projects.c.created_at.desc(), projects.c.id.desc())
        .limit(limit)
    )
    return [ProjectRecord.from_row(row) for row in (await conn.execute(query)).all()]


# By id, under If-Match: exists, update (version bumped), delete (its tasks go by ON DELETE
# CASCADE; answers the id, None when nothing matched).
PROJECTS = VersionedTable(projects, "project", ProjectRecord.from_row)
