"""The cache entries of the tenant API: one per single resource, one per page of a listing.

A page's query is canonical (every parameter, defaults included, in a fixed order), so
`?limit=20` and no query share an entry. Audit events and `GET /v1/tenant` are not cached
(README, "Rate limits and caching").
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from urllib.parse import urlencode

from app.services.cache import CacheKey
from app.services.pagination import DEFAULT_LIMIT, MAX_LIMIT

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


# --- the fast path's view of the same entries ---------------------------------------------
#
# GET routes whose cached answers app/api/fastpath.py may serve before routing, by route
# template: each maps the path parameters and the raw query string to the entry the route
# itself reads (with the functions above), or to None when only the route can tell (a
# query it would have to validate, an id in a form it would have to parse). None is always
# safe: the request then goes through the route as usual.

FastReadKey = Callable[[Mapping[str, str], bytes], CacheKey | None]

_LIMIT_ONLY = re.compile(rb"^limit=([1-9][0-9]{0,3})$")


def _canonical_uuid(value: str) -> uuid.UUID | None:
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return None
    return parsed if str(parsed) == value else None


def _page_limit(query: bytes) -> int | None:
    """The limit of a query that is empty or `limit=N` alone (in range), else None."""
    if not query:
        return DEFAULT_LIMIT
    match = _LIMIT_ONLY.fullmatch(query)
    if match is None or int(match[1]) > MAX_LIMIT:
        return None
    return int(match[1])


def _fast_project(params: Mapping[str, str], query: bytes) -> CacheKey | None:
    # A resource route reads no query parameter, whatever the query string says.
    project_id = _canonical_uuid(params["project_id"])
    return None if project_id is None else project(project_id)


def _fast_task(params: Mapping[str, str], query: bytes) -> CacheKey | None:
    task_id = _canonical_uuid(params["task_id"])
    return None if task_id is None else task(task_id)


def _fast_project_page(params: Mapping[str, str], query: bytes) -> CacheKey | None:
    limit = _page_limit(query)
    return None if limit is None else project_page(limit=limit, cursor=None)


def _fast_task_page(params: Mapping[str, str], query: bytes) -> CacheKey | None:
    project_id = _canonical_uuid(params["project_id"])
    limit = _page_limit(query)
    if project_id is None or limit is None:
        return None
    return task_page(project_id, status=None, assignee=None, label=None, limit=limit, cursor=None)


FAST_READS: dict[str, FastReadKey] = {
    "/v1/projects/{project_id}": _fast_project,
    "/v1/tasks/{task_id}": _fast_task,
    "/v1/projects": _fast_project_page,
    "/v1/projects/{project_id}/tasks": _fast_task_page,
}
