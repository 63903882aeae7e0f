"""The tenant API's cached GETs as the fast path (app/api/fastpath.py) sees them.

By route template: each maps the path parameters and the raw query string to the very
CachedRead its route makes (same entry, same loader), or to None when only the route can
tell (a query it would have to validate, an id in a form it would have to parse). None is
always safe: the request then goes through the route as usual.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping

from app.api.dependencies.cache import CachedRead
from app.api.endpoints.projects import project_page_read, project_read
from app.api.endpoints.tasks import task_page_read, task_read
from app.services.pagination import DEFAULT_LIMIT, MAX_LIMIT

FastRead = Callable[[Mapping[str, str], bytes], CachedRead | None]

_LIMIT_ONLY = re.compile(rb"limit=([1-9][0-9]{0,3})")


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


def _project(params: Mapping[str, str], query: bytes) -> CachedRead | None:
    # A resource route reads no query parameter, whatever the query string says.
    project_id = _canonical_uuid(params["project_id"])
    return None if project_id is None else project_read(project_id)


def _task(params: Mapping[str, str], query: bytes) -> CachedRead | None:
    task_id = _canonical_uuid(params["task_id"])
    return None if task_id is None else task_read(task_id)


def _project_page(params: Mapping[str, str], query: bytes) -> CachedRead | None:
    limit = _page_limit(query)
    return None if limit is None else project_page_read(limit=limit, cursor=None)


def _task_page(params: Mapping[str, str], query: bytes) -> CachedRead | None:
    project_id = _canonical_uuid(params["project_id"])
    limit = _page_limit(query)
    if project_id is None or limit is None:
        return None
    return task_page_read(
        project_id, status=None, assignee=None, label=None, limit=limit, cursor=None
    )


FAST_READS: dict[str, FastRead] = {
    "/v1/projects/{project_id}": _project,
    "/v1/tasks/{task_id}": _task,
    "/v1/projects": _project_page,
    "/v1/projects/{project_id}/tasks": _task_page,
}
