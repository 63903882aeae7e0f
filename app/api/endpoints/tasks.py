"""Tenant API: tasks, created and listed under their project, addressed by their own id."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from app.api.dependencies.cache import CachedRead, CachedReads, Invalidation
from app.api.dependencies.db import TenantConnection
from app.api.dependencies.idempotency import IdempotencyKey
from app.api.dependencies.pagination import PageCursor, PageLimit
from app.api.dependencies.tenant import Actor
from app.api.endpoints import _cache_keys as keys
from app.api.endpoints._resources import cacheable, created, from_cached, from_stored
from app.api.errors import TENANT_ERRORS, responses
from app.api.preconditions import IfMatch, IfNoneMatch, etag, if_match_versions
from app.db.repositories.tasks import TaskFilter
from app.db.session import Executor
from app.schemas.common import Page, SafeStr, without_null
from app.schemas.tasks import TaskCreate, TaskOut, TaskStatus, TaskUpdate
from app.services import idempotency
from app.services import tasks as service
from app.services.cache import CachedResponse
from app.services.idempotency import StoredResponse
from app.services.pagination import DEFAULT_LIMIT

router = APIRouter(tags=["tasks"], responses=responses(*TENANT_ERRORS))


@router.post(
    "/v1/projects/{project_id}/tasks",
    status_code=status.HTTP_201_CREATED,
    response_model=TaskOut,
    summary="Create a task in a project (Location, ETag; Idempotency-Key honoured)",
    responses=responses(400, 404, 409),
)
async def create_task(
    request: Request,
    project_id: uuid.UUID,
    body: TaskCreate,
    conn: TenantConnection,
    actor: Actor,
    key: IdempotencyKey,
    invalidation: Invalidation,
) -> Response:
    async def produce() -> StoredResponse:
        record = await service.create_task(conn, project_id, body, actor=actor.subject)
        invalidation.add(keys.task_pages(project_id))  # not on a replay: that changes nothing
        return created(
            TaskOut.model_validate(record),
            location=f"/v1/tasks/{record.id}",
            etag=etag(record.id, record.version),
        )

    request_hash = idempotency.fingerprint(
        "POST", request.url.path, body.model_dump(mode="json", exclude_unset=True)
    )
    stored, replayed = await idempotency.run_once(conn, key, request_hash, produce)
    return from_stored(stored, replayed=replayed)


@router.get(
    "/v1/projects/{project_id}/tasks",
    response_model=Page[TaskOut],
    summary="List a project's tasks, newest first, filtered by status, assignee and label",
    responses=responses(404),
)
async def list_tasks(
    project_id: uuid.UUID,
    reads: CachedReads,
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
) -> Response:
    read = task_page_read(
        project_id, status=status_, assignee=assignee, label=label, limit=limit, cursor=cursor
    )
    return from_cached(await reads.read(read))


def task_page_read(
    project_id: uuid.UUID,
    *,
    status: TaskStatus | None,
    assignee: str | None,
    label: str | None,
    limit: int,
    cursor: str | None,
) -> CachedRead:
    async def load(conn: Executor) -> CachedResponse:
        records, next_cursor = await service.list_tasks(
            conn,
            project_id,
            filters=TaskFilter(status=status, assignee=assignee, label=label),
            limit=limit,
            cursor=cursor,
        )
        page = Page[TaskOut](
            items=[TaskOut.model_validate(r) for r in records], next_cursor=next_cursor
        )
        return cacheable(page)

    key = keys.task_page(
        project_id, status=status, assignee=assignee, label=label, limit=limit, cursor=cursor
    )
    return CachedRead(key, load)


def task_read(task_id: uuid.UUID) -> CachedRead:
    async def load(conn: Executor) -> CachedResponse:
        record = await service.get_task(conn, task_id)
        return cacheable(TaskOut.model_validate(record), etag=etag(record.id, record.version))

    return CachedRead(keys.task(task_id), load)


@router.get(
    "/v1/tasks/{task_id}",
    response_model=TaskOut,
    summary="One task (ETag; If-None-Match answers 304)",
    responses=responses(304, 404),
)
async def get_task(
    task_id: uuid.UUID, reads: CachedReads, if_none_match: IfNoneMatch = None
) -> Response:
    cached = await reads.read(task_read(task_id))
    return from_cached(cached, if_none_match=if_none_match)


@router.patch(
    "/v1/tasks/{task_id}",
    response_model=TaskOut,
    summary="Change the fields sent (If-Match: 412 unless it names the current ETag)",
    responses=responses(404, 412),
)
async def update_task(
    task_id: uuid.UUID,
    body: TaskUpdate,
    conn: TenantConnection,
    actor: Actor,
    response: Response,
    invalidation: Invalidation,
    if_match: IfMatch = None,
) -> TaskOut:
    record = await service.update_task(
        conn, task_id, body, actor=actor.subject, versions=if_match_versions(if_match, task_id)
    )
    invalidation.add(keys.task(task_id), keys.task_pages(record.project_id))
    response.headers["ETag"] = etag(record.id, record.version)
    return TaskOut.model_validate(record)


@router.delete(
    "/v1/tasks/{task_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a task",
    responses=responses(404, 412),
)
async def delete_task(
    task_id: uuid.UUID,
    conn: TenantConnection,
    actor: Actor,
    invalidation: Invalidation,
    if_match: IfMatch = None,
) -> Response:
    project_id = await service.delete_task(
        conn, task_id, actor=actor.subject, versions=if_match_versions(if_match, task_id)
    )
    invalidation.add(keys.task(task_id), keys.task_pages(project_id))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
