"""Queries on a tenant's `projects` table (through the transaction's pinned tenant schema)."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, exists, insert, select, update

from app.db.models.tenant import projects
from app.db.repositories._keyset import older_than
from app.db.session import Executor, prebuilt


@dataclass(frozen=True, slots=True)
class ProjectRecord:
    id: uuid.UUID
    name: str
    description: str | None
    created_at: datetime
    updated_at: datetime
    version: int

    @classmethod
    def from_row(cls, row: Any) -> ProjectRecord:
        return cls(**row._mapping)


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


async def project_exists(conn: Executor, project_id: uuid.UUID) -> bool:
    return bool(await conn.scalar(select(exists().where(projects.c.id == project_id))))


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


async def update_project(
    conn: Executor,
    project_id: uuid.UUID,
    values: Mapping[str, Any],
    *,
    at: datetime,
    versions: Collection[int] | None,
) -> ProjectRecord | None:
    """Apply `values` and bump the version, only when the version is one of `versions` (None:
    any). The check and the write are one statement, so two writers holding the same ETag
    cannot both succeed: the second one's WHERE no longer matches once the first commits."""
    query = update(projects).where(projects.c.id == project_id)
    if versions is not None:
        query = query.where(projects.c.version.in_(list(versions)))
    row = (
        await conn.execute(
            query.values(**values, updated_at=at, version=projects.c.version + 1).returning(
                projects
            )
        )
    ).one_or_none()
    return ProjectRecord.from_row(row) if row else None


async def delete_project(
    conn: Executor, project_id: uuid.UUID, *, versions: Collection[int] | None
) -> bool:
    """Delete the project (its tasks go by ON DELETE CASCADE); False when nothing matched."""
    query = delete(projects).where(projects.c.id == project_id)
    if versions is not None:
        query = query.where(projects.c.version.in_(list(versions)))
    return (await conn.execute(query.returning(projects.c.id))).one_or_none() is not None
