"""Tasks: rules, optimistic concurrency and audit events around the repository."""

from __future__ import annotations

import uuid
from collections.abc import Collection

from app.core.errors import NotFound
from app.db.executor import Executor
from app.db.models.tenant import tasks
from app.db.repositories import projects as projects_repo
from app.db.repositories import tasks as repo
from app.db.repositories.quota_counts import count_rows
from app.db.repositories.tasks import TaskFilter as TaskFilter  # the service's types
from app.db.repositories.tasks import TaskRecord as TaskRecord
from app.schemas.tasks import TaskCreate, TaskUpdate
from app.services.clock import utcnow
from app.services.pagination import created, cut_page, decode_cursor
from app.services.projects import ProjectNotFound
from app.services.quotas import UNLIMITED, QuotaExceeded, TenantQuotas
from app.services.versioned import Resource


class TaskNotFound(NotFound):
    code = "task_not_found"

    def __init__(self) -> None:
        super().__init__("No task with this id.")


TASK: Resource[TaskRecord] = Resource("task", TaskNotFound, repo.get_task, repo.TASKS)


async def create_task(
    conn: Executor,
    project_id: uuid.UUID,
    body: TaskCreate,
    *,
    actor: str,
    quotas: TenantQuotas = UNLIMITED,
) -> TaskRecord:
    """Create the task in its project (404 without it), within the tenant's quotas (403
    quota_exceeded)."""
    quotas.check_storage()
    at = utcnow()
    record = await repo.insert_task(
        conn,
        project_id,
        body.model_dump(),
        id=uuid.uuid4(),
        created_by=actor,
        at=at,
        event=TASK.event("created", actor=actor, at=at),
        max_tasks=quotas.max_tasks,
    )
    if record is None:
        # The project is not there (the insert read it FOR KEY SHARE), or the tenant is at
        # its quota (counted under its quota lock, still held).
        if quotas.max_tasks is None or not await projects_repo.PROJECTS.exists(conn, project_id):
            raise ProjectNotFound()
        usage = await count_rows(conn, tasks)
        raise QuotaExceeded("max_tasks", limit=quotas.max_tasks, usage=usage)
    return record


async def get_task(conn: Executor, task_id: uuid.UUID) -> TaskRecord:
    return await TASK.get_or_404(conn, task_id)


async def list_tasks(
    conn: Executor,
    project_id: uuid.UUID,
    *,
    filters: TaskFilter,
    limit: int,
    cursor: str | None,
) -> tuple[list[TaskRecord], str | None]:
    after = None if cursor is None else decode_cursor(cursor)
    if not await projects_repo.PROJECTS.exists(conn, project_id):
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
    record: TaskRecord = await TASK.update(conn, task_id, body, actor=actor, versions=versions)
    return record


async def delete_task(
    conn: Executor, task_id: uuid.UUID, *, actor: str, versions: Collection[int] | None
) -> uuid.UUID:
    """Delete the task; returns the id of the project it belonged to."""
    project_id: uuid.UUID = await TASK.delete(conn, task_id, actor=actor, versions=versions)
    return project_id
