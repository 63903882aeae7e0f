"""Queries on a tenant's `tasks` table (through the transaction's pinned tenant schema)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import DateTime, Text, Uuid, bindparam, insert, literal, select
from sqlalchemy.dialects.postgresql import ARRAY

from app.db.executor import Executor, prebuilt
from app.db.models.tenant import projects, tasks
from app.db.repositories._keyset import older_than
from app.db.repositories._records import RowRecord
from app.db.repositories._versioned import VersionedTable
from app.db.repositories.audit import AuditEntry, with_event
from app.db.repositories.quota_counts import below_quota, lock_for_quota


@dataclass(frozen=True, slots=True)
class TaskRecord(RowRecord):
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


@dataclass(frozen=True, slots=True)
class TaskFilter:
    status: str | None = None
    assignee: str | None = None
    label: str | None = None


# The task's columns set on create, each from the bind parameter of its name.
_CREATED = (
    "title",
    "description",
    "status",
    "priority",
    "assignee",
    "labels",
    "due_date",
    "created_by",
)
_AT = bindparam("at", type_=DateTime(timezone=True))


# The project row is locked FOR KEY SHARE by the very SELECT that the insert reads it from:
# no project, no task (and no event); a concurrent delete of the project waits for this
# transaction, so it never turns into a foreign-key error (a 500).
def _insert_task(*conditions: Any) -> Any:
    return prebuilt(
        with_event(
            insert(tasks).from_select(
                ["id", "project_id", *_CREATED, "created_at", "updated_at"],
                select(
                    bindparam("id", type_=Uuid),
                    projects.c.id,
                    *(bindparam(name, type_=tasks.c[name].type) for name in _CREATED),
                    _AT,
                    _AT,
                )
                .where(projects.c.id == bindparam("project_id"), *conditions)
                .with_for_update(read=True, key_share=True),
            ),
            "task",
            list(tasks.c),
        )
    )


_INSERT_TASK = _insert_task()
# Under a quota: no row (and no event) once the tenant has `quota` tasks.
_INSERT_TASK_BELOW_QUOTA = _insert_task(below_quota(tasks))


async def insert_task(
    conn: Executor,
    project_id: uuid.UUID,
    values: Mapping[str, Any],
    *,
    id: uuid.UUID,
    created_by: str,
    at: datetime,
    event: AuditEntry,
    max_tasks: int | None = None,
) -> TaskRecord | None:
    """Insert the task and its audit event, in one statement; None when the project does
    not exist, or when the tenant has `max_tasks` tasks (None: no quota; counted under the
    tenant's quota lock)."""
    params = {
        **values,
        **event.params(),
        "id": id,
        "project_id": project_id,
        "created_by": created_by,
        "at": at,
    }
    statement = _INSERT_TASK
    if max_tasks is not None:
        await lock_for_quota(conn, tasks)
        params["quota"] = max_tasks
        statement = _INSERT_TASK_BELOW_QUOTA
    row = (await conn.execute(statement, params)).one_or_none()
    return TaskRecord.from_row(row) if row else None


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


# By id, under If-Match: exists, update (version bumped), delete (answers the task's
# project id, None when nothing matched).
TASKS = VersionedTable(tasks, "task", TaskRecord.from_row, deleted="project_id")
