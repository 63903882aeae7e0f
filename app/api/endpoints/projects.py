"""Tenant API: projects."""

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
from app.schemas.common import Page
from app.schemas.projects import ProjectCreate, ProjectOut, ProjectUpdate
from app.services import idempotency
from app.services import projects as service
from app.services.idempotency import StoredResponse
from app.services.pagination import DEFAULT_LIMIT, MAX_LIMIT

router = APIRouter(prefix="/v1/projects", tags=["projects"], responses=responses(*TENANT_ERRORS))


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ProjectOut,
    summary="Create a project (Location, ETag; Idempotency-Key honoured)",
    responses=responses(400, 409),
)
async def create_project(
    request: Request,
    body: ProjectCreate,
    conn: TenantConnection,
    actor: Actor,
    key: IdempotencyKey,
) -> Response:
    async def produce() -> StoredResponse:
        record = await service.create_project(conn, body, actor=actor.subject)
        return created(
            ProjectOut.model_validate(record),
            location=f"/v1/projects/{record.id}",
            etag=etag(record.id, record.version),
        )

    request_hash = idempotency.fingerprint(
        "POST", request.url.path, body.model_dump(mode="json", exclude_unset=True)
    )
    stored, replayed = await idempotency.run_once(conn, key, request_hash, produce)
    return from_stored(stored, replayed=replayed)


@router.get("", response_model=Page[ProjectOut], summary="List projects, newest first")
async def list_projects(
    conn: TenantConnection,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Page[ProjectOut]:
    records, next_cursor = await service.list_projects(conn, limit=limit, cursor=cursor)
    return Page[ProjectOut](
        items=[ProjectOut.model_validate(r) for r in records], next_cursor=next_cursor
    )


@router.get(
    "/{project_id}",
    response_model=ProjectOut,
    summary="One project (ETag; If-None-Match answers 304)",
    responses=responses(304, 404),
)
async def get_project(
    project_id: uuid.UUID,
    conn: TenantConnection,
    response: Response,
    if_none_match: IfNoneMatch = None,
) -> ProjectOut | Response:
    record = await service.get_project(conn, project_id)
    tag = etag(record.id, record.version)
    if none_match(if_none_match, tag):
        return not_modified(tag)
    response.headers["ETag"] = tag
    return ProjectOut.model_validate(record)


@router.patch(
    "/{project_id}",
    response_model=ProjectOut,
    summary="Change the fields sent (If-Match: 412 unless it names the current ETag)",
    responses=responses(404, 412),
)
async def update_project(
    project_id: uuid.UUID,
    body: ProjectUpdate,
    conn: TenantConnection,
    actor: Actor,
    response: Response,
    if_match: IfMatch = None,
) -> ProjectOut:
    record = await service.update_project(
        conn,
        project_id,
        body,
        actor=actor.subject,
        versions=if_match_versions(if_match, project_id),
    )
    response.headers["ETag"] = etag(record.id, record.version)
    return ProjectOut.model_validate(record)


@router.delete(
    "/{project_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a project and its tasks",
    responses=responses(404, 412),
)
async def delete_project(
    project_id: uuid.UUID, conn: TenantConnection, actor: Actor, if_match: IfMatch = None
) -> Response:
    await service.delete_project(
        conn, project_id, actor=actor.subject, versions=if_match_versions(if_match, project_id)
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)
