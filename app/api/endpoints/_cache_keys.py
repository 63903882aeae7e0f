"""The cache entries of the tenant API: one per single resource, one per page of a listing.

A page's query is canonical (every parameter, defaults included, in a fixed order), so
`?limit=20` and no query share an entry. Audit events and `GET /v1/tenant` are not cached
(README, "Rate limits and caching").
"""

from __future__ import annotations

import uuid
from urllib.parse import urlencode

from app.services.cache_entries import CacheKey

PROJECTS = "projects"
TASKS = "tasks"


def _query(**params: object) -> str:
    return urlencode([(name, "" if v is None else str(v)) for name, v in params.items()])


def project(project_id: uuid.UUID) -> CacheKey:
    return CacheKey.resource(PROJECTS, str(project_id))


def project_page(*, limit: int, cursor: str | None) -> CacheKey:
    return CacheKey.page(PROJECTS, _query(limit=limit, cursor=cursor))


def project_pages() -> CacheKey:
    return CacheKey.pages(PROJECTS)


def task(task_id: uuid.UUID) -> CacheKey:
    return CacheKey.resource(TASKS, str(task_id))


def _project_tasks(project_id: uuid.UUID) -> str:
    return f"{PROJECTS}/{project_id}/{TASKS}"


def task_page(
    project_id: uuid.UUID,
    *,
    status: str | None,
    assignee: str | None,
    label: str | None,
    limit: int,
    cursor: str | None,
) -> CacheKey:
    query = _query(status=status, assignee=assignee, label=label, limit=limit, cursor=cursor)
    return CacheKey.page(_project_tasks(project_id), query)


def task_pages(project_id: uuid.UUID) -> CacheKey:
    return CacheKey.pages(_project_tasks(project_id))
