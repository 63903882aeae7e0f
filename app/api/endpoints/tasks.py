"""Tenant API: tasks, created and listed under their project, addressed by their own id."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from app.api.dependencies.db import TenantConnection
from app.api.dependencies.idempotency import IdempotencyKey
from app.api.dependencies.tenant import Actor
from app.api.endpoints._resources import created, from_stored, not_modified
from app.api.errors import TENANT_ERRORS, responses
from app.api.preconditions import IfMatch, IfNoneMatch, etag, if_match_versions, none_match
from app.db.repositories.tasks import TaskFilter
from app.schemas.common import Page, SafeStr
from app.schemas.tasks import TaskCreate, TaskOut, TaskStatus, TaskUpdate
from app.services import idempotency
from app.services import tasks as service
from app.services.idempotency import StoredResponse
from app.services.pagination import DEFAULT_LIMIT, MAX_LIMIT

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
) -> Response:
    async def produce() -> StoredResponse:
        record = await service.create_task(conn, project_id, body, actor=actor.subject)
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
    conn: TenantConnection,
    status_: Annotated[TaskStatus | None, Query(alias="status")] = None,
    assignee: Annotated[SafeStr | None, Query(min_length=1, max_length=200)] = None,
    label: Annotated[
        SafeStr | None, Query(min_length=1, max_length=50, description="tasks carrying it")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Page[TaskOut]:
    records, next_cursor = await service.list_tasks(
        conn,
        project_id,
        filters=TaskFilter(status=status_, assignee=assignee, label=label),
        limit=limit,
        cursor=cursor,
    )
    return Page[TaskOut](
        items=[TaskOut.model_validate(r) for r in records], next_cursor=next_cursor
    )


@router.get(
    "/v1/tasks/{task_id}",
    response_model=TaskOut,
    summary="One task (ETag; If-None-Match answers 304)",
    responses=responses(304, 404),
)
async def get_task(
    task_id: uuid.UUID,
    conn: TenantConnection,
    response: Response,
    if_none_match: IfNoneMatch = None,
) -> TaskOut | Response:
    record = await service.get_task(conn, task_id)
    tag = etag(record.id, record.version)
    if none_match(if_none_match, tag):
        return not_modified(tag)
    response.headers["ETag"] = tag
    return TaskOut.model_validate(record)


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
    if_match: IfMatch = None,
) -> TaskOut:
    record = await service.update_task(
        conn, task_id, body, actor=actor.subject, versions=if_match_versions(if_match, task_id)
    )
    response.headers["ETag"] = etag(record.id, record.version)
    return TaskOut.model_validate(record)


@router.delete(
    "/v1/tasks/{task_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a task",
    responses=responses(404, 412),
)
async def delete_task(
    task_id: uuid.UUID, conn: TenantConnection, actor: Actor, if_match: IfMatch = None
) -> Response:
    await service.delete_task(
        conn, task_id, actor=actor.subject, versions=if_match_versions(if_match, task_id)
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)
