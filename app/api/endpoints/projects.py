"""Tenant API: projects."""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from app.api.cached_reads import CachedRead, cached_get, one_resource, page_read, resource_read
from app.api.declared_routes import create_route, delete_route, update_route
from app.api.dependencies.db import TenantWrite
from app.api.dependencies.pagination import PageCursor, PageLimit
from app.api.endpoints import _cache_keys as keys
from app.api.errors import TENANT_ERRORS, responses
from app.schemas.common import Page
from app.schemas.projects import ProjectCreate, ProjectOut, ProjectUpdate
from app.services import projects as service
from app.services.pagination import DEFAULT_LIMIT

router = APIRouter(prefix="/v1/projects", tags=["projects"], responses=responses(*TENANT_ERRORS))


@create_route(
    router,
    "",
    body=ProjectCreate,
    out=ProjectOut,
    location="/v1/projects/{id}",
    summary="Create a project (Location, ETag; Idempotency-Key honoured)",
    errors=(400, 409),
)
async def create_project(write: TenantWrite, body: ProjectCreate) -> service.ProjectRecord:
    record = await service.create_project(
        write.conn, body, actor=write.actor.subject, quotas=write.quotas
    )
    write.invalidation.add(keys.project_pages())  # not on a replay: that changes nothing
    return record


@cached_get(router, "", response_model=Page[ProjectOut], summary="List projects, newest first")
def list_projects(
    limit: PageLimit = DEFAULT_LIMIT,
    cursor: PageCursor = None,
) -> CachedRead:
    return page_read(
        keys.project_page(limit=limit, cursor=cursor),
        lambda conn: service.list_projects(conn, limit=limit, cursor=cursor),
        ProjectOut,
    )


@cached_get(router, "/{project_id}", **one_resource(ProjectOut, "project"))
def get_project(project_id: uuid.UUID) -> CachedRead:
    return resource_read(
        keys.project(project_id),
        lambda conn: service.get_project(conn, project_id),
        ProjectOut.model_validate,
    )


@update_route(router, "/{project_id}", body=ProjectUpdate, out=ProjectOut)
async def update_project(
    write: TenantWrite, project_id: uuid.UUID, body: ProjectUpdate
) -> service.ProjectRecord:
    record = await service.update_project(
        write.conn, project_id, body, actor=write.actor.subject, versions=write.versions
    )
    write.invalidation.add(keys.project(project_id), keys.project_pages())
    return record


@delete_route(router, "/{project_id}", summary="Delete a project and its tasks")
async def delete_project(write: TenantWrite, project_id: uuid.UUID) -> None:
    await service.delete_project(
        write.conn, project_id, actor=write.actor.subject, versions=write.versions
    )
    # Its tasks went with it, and `GET /v1/tasks/{id}` entries are keyed by task id alone
    # (the project is unknown until the task is loaded): listing them would cost a query per
    # delete, so the tenant's generation is bumped instead. Deletes are rare next to reads.
    write.invalidation.everything()
