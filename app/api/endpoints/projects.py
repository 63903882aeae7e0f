"""Tenant API: projects."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request, Response, status

from app.api.dependencies.cache import CachedRead, CachedReads, Invalidation
from app.api.dependencies.db import TenantConnection
from app.api.dependencies.idempotency import IdempotencyKey
from app.api.dependencies.pagination import PageCursor, PageLimit
from app.api.dependencies.tenant import Actor
from app.api.endpoints import _cache_keys as keys
from app.api.endpoints._resources import cacheable, created, from_cached, from_stored
from app.api.errors import TENANT_ERRORS, responses
from app.api.preconditions import IfMatch, IfNoneMatch, etag, if_match_versions
from app.db.session import Executor
from app.schemas.common import Page
from app.schemas.projects import ProjectCreate, ProjectOut, ProjectUpdate
from app.services import idempotency
from app.services import projects as service
from app.services.cache import CachedResponse
from app.services.idempotency import StoredResponse
from app.services.pagination import DEFAULT_LIMIT

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
    invalidation: Invalidation,
) -> Response:
    async def produce() -> StoredResponse:
        record = await service.create_project(conn, body, actor=actor.subject)
        invalidation.add(keys.project_pages())  # not on a replay: that changes nothing
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


def project_page_read(*, limit: int, cursor: str | None) -> CachedRead:
    async def load(conn: Executor) -> CachedResponse:
        records, next_cursor = await service.list_projects(conn, limit=limit, cursor=cursor)
        page = Page[ProjectOut](
            items=[ProjectOut.model_validate(r) for r in records], next_cursor=next_cursor
        )
        return cacheable(page)

    return CachedRead(keys.project_page(limit=limit, cursor=cursor), load)


@router.get("", response_model=Page[ProjectOut], summary="List projects, newest first")
async def list_projects(
    reads: CachedReads,
    limit: PageLimit = DEFAULT_LIMIT,
    cursor: PageCursor = None,
) -> Response:
    return from_cached(await reads.read(project_page_read(limit=limit, cursor=cursor)))


def project_read(project_id: uuid.UUID) -> CachedRead:
    async def load(conn: Executor) -> CachedResponse:
        record = await service.get_project(conn, project_id)
        return cacheable(ProjectOut.model_validate(record), etag=etag(record.id, record.version))

    return CachedRead(keys.project(project_id), load)


@router.get(
    "/{project_id}",
    response_model=ProjectOut,
    summary="One project (ETag; If-None-Match answers 304)",
    responses=responses(304, 404),
)
async def get_project(
    project_id: uuid.UUID, reads: CachedReads, if_none_match: IfNoneMatch = None
) -> Response:
    cached = await reads.read(project_read(project_id))
    return from_cached(cached, if_none_match=if_none_match)


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
    invalidation: Invalidation,
    if_match: IfMatch = None,
) -> ProjectOut:
    record = await service.update_project(
        conn,
        project_id,
        body,
        actor=actor.subject,
        versions=if_match_versions(if_match, project_id),
    )
    invalidation.add(keys.project(project_id), keys.project_pages())
    response.headers["ETag"] = etag(record.id, record.version)
    return ProjectOut.model_validate(record)


@router.delete(
    "/{project_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a project and its tasks",
    responses=responses(404, 412),
)
async def delete_project(
    project_id: uuid.UUID,
    conn: TenantConnection,
    actor: Actor,
    invalidation: Invalidation,
    if_match: IfMatch = None,
) -> Response:
    await service.delete_project(
        conn, project_id, actor=actor.subject, versions=if_match_versions(if_match, project_id)
    )
    # Its tasks went with it, and `GET /v1/tasks/{id}` entries are keyed by task id alone
    # (the project is unknown until the task is loaded): listing them would cost a query per
    # delete, so the tenant's generation is bumped instead. Deletes are rare next to reads.
    invalidation.everything()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
