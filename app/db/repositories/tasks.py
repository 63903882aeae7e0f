"""Queries on a tenant's `tasks` table (through the transaction's pinned tenant schema)."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Text, bindparam, delete, exists, insert, literal, select, update
from sqlalchemy.dialects.postgresql import ARRAY

from app.db.models.tenant import tasks
from app.db.repositories._keyset import older_than
from app.db.session import Executor, prebuilt


@dataclass(frozen=True, slots=True)
class TaskRecord:
    id: uuid.UUID
    project_id: uuid.UUID
    title: str
    description: str | None
    status: str
    priority: str
    assignee: str | None
    labels: list[str]
    due_date: date | None
    created_by: str
    created_at: datetime
    updated_at: datetime
    version: int

    @classmethod
    def from_row(cls, row: Any) -> TaskRecord:
        return cls(**row._mapping)


@dataclass(frozen=True, slots=True)
class TaskFilter:
    status: str | None = None
    assignee: str | None = None
    label: str | None = None


async def insert_task(conn: Executor, values: Mapping[str, Any]) -> TaskRecord:
    row = (await conn.execute(insert(tasks).values(**values).returning(tasks))).one()
    return TaskRecord.from_row(row)


_GET_TASK = prebuilt(select(tasks).where(tasks.c.id == bindparam("task_id")))
_FIRST_TASKS = prebuilt(
    select(tasks)
    .where(tasks.c.project_id == bindparam("project_id"))
    .order_by(tasks.c.created_at.desc(), tasks.c.id.desc())
    .limit(bindparam("limit"))
)


async def get_task(conn: Executor, task_id: uuid.UUID) -> TaskRecord | None:
    row = (await conn.execute(_GET_TASK, {"task_id": task_id})).one_or_none()
    return TaskRecord.from_row(row) if row else None


async def task_exists(conn: Executor, task_id: uuid.UUID) -> bool:
    return bool(await conn.scalar(select(exists().where(tasks.c.id == task_id))))


async def list_tasks(
    conn: Executor,
    project_id: uuid.UUID,
    *,
    filters: TaskFilter,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
) -> list[TaskRecord]:
    if filters == TaskFilter() and after is None:  # a first page: the common case
        rows = (await conn.execute(_FIRST_TASKS, {"project_id": project_id, "limit": limit})).all()
        return [TaskRecord.from_row(row) for row in rows]
    query = select(tasks).where(tasks.c.project_id == project_id)
    if filters.status is not None:
        query = query.where(tasks.c.status == filters.status)
    if filters.assignee is not None:
        query = query.where(tasks.c.assignee == filters.assignee)
    if filters.label is not None:
        # labels @> ARRAY[label]: the containment operator the GIN index serves.
        query = query.where(tasks.c.labels.contains(literal([filters.label], ARRAY(Text))))
    if after is not None:
        query = query.where(older_than(tasks.c.created_at, tasks.c.id, after))
    query = query.order_by(tasks.c.created_at.desc(), tasks.c.id.desc()).limit(limit)
    return [TaskRecord.from_row(row) for row in (await conn.execute(query)).all()]


async def update_task(
    conn: Executor,
    task_id: uuid.UUID,
    values: Mapping[str, Any],
    *,
    at: datetime,
    versions: Collection[int] | None,
) -> TaskRecord | None:
    """Like update_project: version check and write in one statement."""
    query = update(tasks).where(tasks.c.id == task_id)
    if versions is not None:
        query = query.where(tasks.c.version.in_(list(versions)))
    row = (
        await conn.execute(
            query.values(**values, updated_at=at, version=tasks.c.version + 1).returning(tasks)
        )
    ).one_or_none()
    return TaskRecord.from_row(row) if row else None


async def delete_task(
    conn: Executor, task_id: uuid.UUID, *, versions: Collection[int] | None
) -> uuid.UUID | None:
    """Delete the task; its project's id, or None when nothing matched."""
    query = delete(tasks).where(tasks.c.id == task_id)
    if versions is not None:
        query = query.where(tasks.c.version.in_(list(versions)))
    project_id: uuid.UUID | None = await conn.scalar(query.returning(tasks.c.project_id))
    return project_id
