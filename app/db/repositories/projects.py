"""Queries on a tenant's `projects` table (through the transaction's pinned tenant schema)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, insert, select

from app.db.executor import Executor, prebuilt
from app.db.models.tenant import projects
from app.db.repositories._keyset import older_than
from app.db.repositories._records import RowRecord
from app.db.repositories._versioned import VersionedTable


@dataclass(frozen=True, slots=True)
class ProjectRecord(RowRecord):
    id: uuid.UUID
    name: str
    description: str | None
    created_at: datetime
    updated_at: datetime
    version: int


async def insert_project(
    conn: Executor, *, id: uuid.UUID, name: str, description: str | None, at: datetime
) -> ProjectRecord:
    row = (
        await conn.execute(
            insert(projects)
            .values(id=id, name=name, description=description, created_at=at, updated_at=at)
            .returning(projects)
        )
    ).one()
    return ProjectRecord.from_row(row)


_GET_PROJECT = prebuilt(select(projects).where(projects.c.id == bindparam("project_id")))
_FIRST_PROJECTS = prebuilt(
    select(projects)
    .order_by(projects.c.created_at.desc(), projects.c.id.desc())
    .limit(bindparam("limit"))
)


async def get_project(conn: Executor, project_id: uuid.UUID) -> ProjectRecord | None:
    row = (await conn.execute(_GET_PROJECT, {"project_id": project_id})).one_or_none()
    return ProjectRecord.from_row(row) if row else None


async def lock_project_for_child(conn: Executor, project_id: uuid.UUID) -> bool:
    """True when the project exists; it then cannot be deleted until this transaction ends
    (FOR KEY SHARE: the lock a foreign key takes, which lets updates of the project through)."""
    found = await conn.scalar(
        select(projects.c.id).where(projects.c.id == project_id).with_for_update(key_share=True)
    )
    return found is not None


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
PROJECTS = VersionedTable(projects, ProjectRecord.from_row)
