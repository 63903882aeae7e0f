"""Projects: rules, optimistic concurrency and audit events around the repository."""

from __future__ import annotations

import uuid
from collections.abc import Collection

from app.core.errors import NotFound
from app.db.executor import Executor
from app.db.models.tenant import projects
from app.db.repositories import projects as repo
from app.db.repositories.projects import ProjectRecord as ProjectRecord  # the service's types
from app.db.repositories.quota_counts import count_rows
from app.schemas.projects import ProjectCreate, ProjectUpdate
from app.services.clock import utcnow
from app.services.pagination import created, cut_page, decode_cursor
from app.services.quotas import UNLIMITED, QuotaExceeded, TenantQuotas
from app.services.versioned import Resource


class ProjectNotFound(NotFound):
    code = "project_not_found"

    def __init__(self) -> None:
        # The same words whether the id never existed or belongs to another tenant.
        super().__init__("No project with this id.")


PROJECT: Resource[ProjectRecord] = Resource(
    "project", ProjectNotFound, repo.get_project, repo.PROJECTS
)


async def create_project(
    conn: Executor, body: ProjectCreate, *, actor: str, quotas: TenantQuotas = UNLIMITED
) -> ProjectRecord:
    """Create the project, within the tenant's quotas (403 quota_exceeded)."""
    quotas.check_storage()
    at = utcnow()
    record = await repo.insert_project(
        conn,
        id=uuid.uuid4(),
        name=body.name,
        description=body.description,
        at=at,
        event=PROJECT.event("created", actor=actor, at=at),
        max_projects=quotas.max_projects,
    )
    if record is None:  # at the quota (counted under the tenant's quota lock, still held)
        assert quotas.max_projects is not None
        usage = await count_rows(conn, projects)
        raise QuotaExceeded("max_projects", limit=quotas.max_projects, usage=usage)
    return record


async def get_project(conn: Executor, project_id: uuid.UUID) -> ProjectRecord:
    return await PROJECT.get_or_404(conn, project_id)


async def list_projects(
    conn: Executor, *, limit: int, cursor: str | None
) -> tuple[list[ProjectRecord], str | None]:
    after = None if cursor is None else decode_cursor(cursor)
    records = await repo.list_projects(conn, limit=limit + 1, after=after)
    return cut_page(records, limit, created)


async def update_project(
    conn: Executor,
    project_id: uuid.UUID,
    body: ProjectUpdate,
    *,
    actor: str,
    versions: Collection[int] | None,
) -> ProjectRecord:
    """The fields sent; `versions` (from If-Match) None means unconditional."""
    record: ProjectRecord = await PROJECT.update(
        conn, project_id, body, actor=actor, versions=versions
    )
    return record


async def delete_project(
    conn: Executor, project_id: uuid.UUID, *, actor: str, versions: Collection[int] | None
) -> None:
    """Delete the project and, by the foreign key's cascade, its tasks."""
    await PROJECT.delete(conn, project_id, actor=actor, versions=versions)
