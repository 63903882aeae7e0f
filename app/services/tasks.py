"""Tasks: rules, optimistic concurrency and audit events around the repository."""

from __future__ import annotations

import uuid
from collections.abc import Collection

from app.core.errors import NotFound
from app.db.repositories import projects as projects_repo
from app.db.repositories import tasks as repo
from app.db.repositories.tasks import TaskFilter, TaskRecord
from app.db.session import Executor
from app.schemas.tasks import TaskCreate, TaskUpdate
from app.services.audit import record_event
from app.services.clock import utcnow
from app.services.pagination import created, cut_page, decode_cursor
from app.services.projects import ProjectNotFound, VersionMismatch

RESOURCE = "task"


class TaskNotFound(NotFound):
    code = "task_not_found"

    def __init__(self) -> None:
        super().__init__("No task with this id.")


async def create_task(
    conn: Executor, project_id: uuid.UUID, body: TaskCreate, *, actor: str
) -> TaskRecord:
    # The key-share lock keeps the project from being deleted between this check and the
    # insert, so a concurrent delete can never turn into a foreign-key error (a 500).
    if not await projects_repo.lock_project_for_child(conn, project_id):
        raise ProjectNotFound()
    at = utcnow()
    record = await repo.insert_task(
        conn,
        {
            **body.model_dump(),
            "id": uuid.uuid4(),
            "project_id": project_id,
            "created_by": actor,
            "created_at": at,
            "updated_at": at,
        },
    )
    await record_event(
        conn,
        actor=actor,
        action="task.created",
        resource_type=RESOURCE,
        resource_id=record.id,
        at=at,
    )
    return record


async def get_task(conn: Executor, task_id: uuid.UUID) -> TaskRecord:
    record = await repo.get_task(conn, task_id)
    if record is None:
        raise TaskNotFound()
    return record


async def list_tasks(
    conn: Executor,
    project_id: uuid.UUID,
    *,
    filters: TaskFilter,
    limit: int,
    cursor: str | None,
) -> tuple[list[TaskRecord], str | None]:
    after = None if cursor is None else decode_cursor(cursor)
    if not await projects_repo.project_exists(conn, project_id):
        raise ProjectNotFound()
    records = await repo.list_tasks(conn, project_id, filters=filters, limit=limit + 1, after=after)
    return cut_page(records, limit, created)


async def update_task(
    conn: Executor,
    task_id: uuid.UUID,
    body: TaskUpdate,
    *,
    actor: str,
    versions: Collection[int] | None,
) -> TaskRecord:
    changes = body.model_dump(exclude_unset=True)
    if not changes:
        current = await get_task(conn, task_id)
        if versions is not None and current.version not in versions:
            raise VersionMismatch()
        return current
    at = utcnow()
    record = await repo.update_task(conn, task_id, changes, at=at, versions=versions)
    if record is None:
        raise await _missing_or_mismatch(conn, task_id)
    await record_event(
        conn,
        actor=actor,
        action="task.updated",
        resource_type=RESOURCE,
        resource_id=record.id,
        at=at,
    )
    return record


async def delete_task(
    conn: Executor, task_id: uuid.UUID, *, actor: str, versions: Collection[int] | None
) -> uuid.UUID:
    """Delete the task; returns the id of the project it belonged to."""
    project_id = await repo.delete_task(conn, task_id, versions=versions)
    if project_id is None:
        raise await _missing_or_mismatch(conn, task_id)
    await record_event(
        conn,
        actor=actor,
        action="task.deleted",
        resource_type=RESOURCE,
        resource_id=task_id,
        at=utcnow(),
    )
    return project_id


async def _missing_or_mismatch(conn: Executor, task_id: uuid.UUID) -> Exception:
    if await repo.task_exists(conn, task_id):
        return VersionMismatch()
    return TaskNotFound()
