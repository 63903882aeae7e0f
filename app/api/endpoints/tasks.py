"""Tenant API: tasks, created and listed under their project, addressed by their own id."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from app.api.cached_reads import CachedRead, cached_get, one_resource, page_read, resource_read
from app.api.declared_routes import create_route, delete_route, update_route
from app.api.dependencies.db import TenantWrite
from app.api.dependencies.pagination import PageCursor, PageLimit
from app.api.endpoints import _cache_keys as keys
from app.api.errors import TENANT_ERRORS, responses
from app.schemas.common import Page, SafeStr, without_null
from app.schemas.tasks import TaskCreate, TaskOut, TaskStatus, TaskUpdate
from app.services import tasks as service
from app.services.pagination import DEFAULT_LIMIT

router = APIRouter(tags=["tasks"], responses=responses(*TENANT_ERRORS))


@create_route(
    router,
    "/v1/projects/{project_id}/tasks",
    body=TaskCreate,
    out=TaskOut,
    location="/v1/tasks/{id}",
    summary="Create a task in a project (Location, ETag; Idempotency-Key honoured)",
    errors=(400, 404, 409),
)
async def create_task(
    write: TenantWrite, body: TaskCreate, project_id: uuid.UUID
) -> service.TaskRecord:
    record = await service.create_task(
        write.conn, project_id, body, actor=write.actor.subject, quotas=write.quotas
    )
    write.invalidation.add(keys.task_pages(project_id))  # not on a replay: that changes nothing
    return record


@cached_get(
    router,
    "/v1/projects/{project_id}/tasks",
    response_model=Page[TaskOut],
    summary="List a project's tasks, newest first, filtered by status, assignee and label",
    responses=responses(404),
)
def list_tasks(
    project_id: uuid.UUID,
    status_: Annotated[
        TaskStatus | None, Query(alias="status", json_schema_extra=without_null())
    ] = None,
    assignee: Annotated[
        SafeStr | None, Query(min_length=1, max_length=200, json_schema_extra=without_null())
    ] = None,
    label: Annotated[
        SafeStr | None,
        Query(
            min_length=1,
            max_length=50,
            description="tasks carrying it",
            json_schema_extra=without_null(),
        ),
    ] = None,
    limit: PageLimit = DEFAULT_LIMIT,
    cursor: PageCursor = None,
) -> CachedRead:
    filters = service.TaskFilter(status=status_, assignee=assignee, label=label)
    return page_read(
        keys.task_page(
            project_id, status=status_, assignee=assignee, label=label, limit=limit, cursor=cursor
        ),
        lambda conn: service.list_tasks(
            conn, project_id, filters=filters, limit=limit, cursor=cursor
        ),
        TaskOut,
    )


@cached_get(router, "/v1/tasks/{task_id}", **one_resource(TaskOut, "task"))
def get_task(task_id: uuid.UUID) -> CachedRead:
    return resource_read(
        keys.task(task_id), lambda conn: service.get_task(conn, task_id), TaskOut.model_validate
    )


@update_route(router, "/v1/tasks/{task_id}", body=TaskUpdate, out=TaskOut)
async def update_task(
    write: TenantWrite, task_id: uuid.UUID, body: TaskUpdate
) -> service.TaskRecord:
    record = await service.update_task(
        write.conn, task_id, body, actor=write.actor.subject, versions=write.versions
    )
    write.invalidation.add(keys.task(task_id), keys.task_pages(record.project_id))
    return record


@delete_route(router, "/v1/tasks/{task_id}", summary="Delete a task")
async def delete_task(write: TenantWrite, task_id: uuid.UUID) -> None:
    project_id = await service.delete_task(
        write.conn, task_id, actor=write.actor.subject, versions=write.versions
    )
    write.invalidation.add(keys.task(task_id), keys.task_pages(project_id))
