"""Projects: rules, optimistic concurrency and audit events around the repository."""

from __future__ import annotations

import uuid
from collections.abc import Collection

from app.core.errors import NotFound, PreconditionFailed
from app.db.repositories import projects as repo
from app.db.repositories.projects import ProjectRecord
from app.db.session import Executor
from app.schemas.projects import ProjectCreate, ProjectUpdate
from app.services.audit import record_event
from app.services.clock import utcnow
from app.services.pagination import created, cut_page, decode_cursor

RESOURCE = "project"


class ProjectNotFound(NotFound):
    code = "project_not_found"

    def __init__(self) -> None:
        # The same words whether the id never existed or belongs to another tenant.
        super().__init__("No project with this id.")


class VersionMismatch(PreconditionFailed):
    def __init__(self) -> None:
        super().__init__("If-Match does not match the current ETag of this resource.")


async def create_project(conn: Executor, body: ProjectCreate, *, actor: str) -> ProjectRecord:
    at = utcnow()
    record = await repo.insert_project(
        conn, id=uuid.uuid4(), name=body.name, description=body.description, at=at
    )
    await record_event(
        conn,
        actor=actor,
        action="project.created",
        resource_type=RESOURCE,
        resource_id=record.id,
        at=at,
    )
    return record


async def get_project(conn: Executor, project_id: uuid.UUID) -> ProjectRecord:
    record = await repo.get_project(conn, project_id)
    if record is None:
        raise ProjectNotFound()
    return record


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
    """Partial update; `versions` (from If-Match) None means unconditional."""
    changes = body.model_dump(exclude_unset=True)
    if not changes:
        # Nothing to change: no new version, no event; the precondition still applies.
        current = await get_project(conn, project_id)
        if versions is not None and current.version not in versions:
            raise VersionMismatch()
        return current
    at = utcnow()
    record = await repo.update_project(conn, project_id, changes, at=at, versions=versions)
    if record is None:
        raise await _missing_or_mismatch(conn, project_id)
    await record_event(
        conn,
        actor=actor,
        action="project.updated",
        resource_type=RESOURCE,
        resource_id=record.id,
        at=at,
    )
    return record


async def delete_project(
    conn: Executor,
    project_id: uuid.UUID,
    *,
    actor: str,
    versions: Collection[int] | None,
) -> None:
    """Delete the project and, by the foreign key's cascade, its tasks."""
    if not await repo.delete_project(conn, project_id, versions=versions):
        raise await _missing_or_mismatch(conn, project_id)
    await record_event(
        conn,
        actor=actor,
        action="project.deleted",
        resource_type=RESOURCE,
        resource_id=project_id,
        at=utcnow(),
    )


async def _missing_or_mismatch(conn: Executor, project_id: uuid.UUID) -> Exception:
    if await repo.project_exists(conn, project_id):
        return VersionMismatch()
    return ProjectNotFound()
