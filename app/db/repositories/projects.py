"""Queries on a tenant's `projects` table (through the transaction's pinned tenant schema)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import DateTime, Uuid, bindparam, insert, select

from app.db.executor import Executor, prebuilt
from app.db.models.tenant import projects
from app.db.repositories._keyset import older_than
from app.db.repositories._records import RowRecord
from app.db.repositories._versioned import VersionedTable
from app.db.repositories.audit import AuditEntry, with_event
from app.db.repositories.quota_counts import below_quota, lock_for_quota


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

# The same insert under a quota: no row (and no event) once the tenant has `quota` projects.
_INSERT_PROJECT_BELOW_QUOTA = prebuilt(
    with_event(
        insert(projects).from_select(
            ["id", "name", "description", "created_at", "updated_at"],
            select(
                bindparam("id", type_=Uuid),
                bindparam("name", type_=projects.c.name.type),
                bindparam("description", type_=projects.c.description.type),
                _AT,
                _AT,
            ).where(below_quota(projects)),
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
    max_projects: int | None = None,
) -> ProjectRecord | None:
    """Insert the project and its audit event, in one statement; under `max_projects`
    (None: no quota), counted under the tenant's quota lock, None when it is reached."""
    params = {"id": id, "name": name, "description": description, "at": at, **event.params()}
    if max_projects is None:
        return ProjectRecord.from_row((await conn.execute(_INSERT_PROJECT, params)).one())
    await lock_for_quota(conn, projects)
    params["quota"] = max_projects
    row = (await conn.execute(_INSERT_PROJECT_BELOW_QUOTA, params)).one_or_none()
    return ProjectRecord.from_row(row) if row else None


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
