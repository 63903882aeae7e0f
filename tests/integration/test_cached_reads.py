"""Cached GETs (app/api/cached_reads.py): answered before routing exactly as their routes
answer them, against real PostgreSQL and Redis.

The equivalence test sends the same requests to the app and to a copy of it without
`CachedReadsFirst` (every request then goes through FastAPI's routing and dependencies),
for every cached route, and compares status, headers and body.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI, Request
from fastapi.routing import iter_route_contexts
from sqlalchemy.ext.asyncio import AsyncEngine

from app.api import admission
from app.api.admission import Admitted
from app.api.cached_reads import CachedReadsFirst, declaration_of
from app.core.config import Settings
from app.db.repositories.tenants import TenantRecord
from app.main import create_app
from tests.factories import make_tenant, post_project, post_task
from tests.metrics_support import CacheMeter
from tests.support import assert_problem, running_app

Headers = dict[str, str]

# Headers that differ between any two responses, whoever answers.
VARYING = {"x-request-id", "x-ratelimit-remaining", "x-ratelimit-reset", "retry-after"}


def stable(response: httpx.Response) -> tuple[int, Any, dict[str, str]]:
    headers = {k: v for k, v in response.headers.items() if k not in VARYING}
    body: Any = response.content
    if response.content and response.headers.get("content-type") == "application/problem+json":
        body = response.json()
        body.pop("request_id", None)
        if body.get("code") == "rate_limited":
            body.pop("detail")  # names the seconds left, which the clock moves
    return response.status_code, body, headers


def remaining(response: httpx.Response) -> int:
    return int(response.headers["x-ratelimit-remaining"])


@pytest.fixture
def routed(app: FastAPI) -> Iterator[list[str]]:
    """The paths of the requests that reached the tenant routes' admission dependency."""
    calls: list[str] = []

    async def counting_admission(request: Request) -> Admitted:
        calls.append(request.url.path)
        return await admission.get_admission(request)

    app.dependency_overrides[admission.get_admission] = counting_admission
    try:
        yield calls
    finally:
        del app.dependency_overrides[admission.get_admission]


@pytest.fixture(scope="module")
async def routes_only(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A replica of the app whose cached reads all go through routing."""
    application = create_app(settings)
    application.user_middleware = [
        m for m in application.user_middleware if m.cls is not CachedReadsFirst
    ]
    async with LifespanManager(application):
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c


def test_the_cached_routes_are_the_four_declared_reads(app: FastAPI) -> None:
    cached = sorted(
        str(ctx.path_format) for ctx in iter_route_contexts(app.routes) if declaration_of(ctx)
    )
    assert cached == [
        "/v1/projects",
        "/v1/projects/{project_id}",
        "/v1/projects/{project_id}/tasks",
        "/v1/tasks/{task_id}",
    ]


@dataclass(frozen=True)
class World:
    tenant: TenantRecord
    project: dict[str, Any]
    task: dict[str, Any]


@pytest.fixture(scope="module")
async def world(app: FastAPI, engine: AsyncEngine, settings: Settings, make_token: Any) -> World:
    """One tenant with a project and a task, for every case of the module (none writes)."""
    tenant = await make_tenant(engine, settings)
    headers = {"Authorization": "Bearer " + make_token(tenant=tenant.slug, scopes="api:write")}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        project = await post_project(client, headers)
        task = await post_task(client, headers, project["id"])
    return World(tenant, project, task)


# Per cached route: a template filled from the world ({project}, {task}).
CACHED_ROUTES = {
    "project": "/v1/projects/{project}",
    "task": "/v1/tasks/{task}",
    "projects": "/v1/projects",
    "tasks": "/v1/projects/{project}/tasks",
}
RESOURCES = ("project", "task")
PAGES = ("projects", "tasks")


@dataclass(frozen=True)
class Case:
    name: str
    path: Callable[[str], str] = lambda url: url
    headers: Callable[..., Headers] | None = None  # (world, auth, make_token) -> headers
    method: str = "GET"
    only: tuple[str, ...] = tuple(CACHED_ROUTES)
    expect: int = 200


def _reader(world: World, auth: Callable[..., Headers], make_token: Any) -> Headers:
    return auth(world.tenant, sub="reader", scopes="api:read")


CASES = [
    Case("hit_or_miss"),
    Case("query_repeated", path=lambda url: url + "?limit=1&limit=2"),
    Case("query_unknown_ignored", path=lambda url: url + "?limit=3&colour=red"),
    Case(
        "uuid_uppercase",
        path=lambda url: url[: url.rindex("/")] + url[url.rindex("/") :].upper(),
        only=RESOURCES,
    ),
    Case("limit_zero", path=lambda url: url + "?limit=0", only=PAGES, expect=422),
    Case("limit_text", path=lambda url: url + "?limit=abc", only=PAGES, expect=422),
    Case("filter_status_bad", path=lambda url: url + "?status=nope", only=("tasks",), expect=422),
    Case("filter_status", path=lambda url: url + "?status=todo&label=x", only=("tasks",)),
    Case("limit_max", path=lambda url: url + "?limit=100", only=PAGES),
    Case("limit_over", path=lambda url: url + "?limit=101", only=PAGES, expect=422),
    Case("limit_signed", path=lambda url: url + "?limit=+5", only=PAGES),
    Case("limit_decimal", path=lambda url: url + "?limit=5.0", only=PAGES),
    Case("limit_encoded", path=lambda url: url + "?limit=%32", only=PAGES),
    Case("limit_empty", path=lambda url: url + "?limit=", only=PAGES, expect=422),
    Case("cursor_empty", path=lambda url: url + "?cursor=", only=PAGES),
    Case("cursor_bad", path=lambda url: url + "?cursor=nope", only=PAGES, expect=422),
    Case("label_empty", path=lambda url: url + "?label=", only=("tasks",), expect=422),
    Case("assignee_control", path=lambda url: url + "?assignee=a%01b", only=("tasks",)),
    Case("status_alias_only", path=lambda url: url + "?status_=nope", only=("tasks",)),
    Case(
        "malformed_id",
        path=lambda url: url.rsplit("/", 1)[0] + "/not-a-uuid",
        only=RESOURCES,
        expect=422,
    ),
    Case(
        "unknown_id",
        path=lambda url: url.rsplit("/", 1)[0] + f"/{uuid.UUID(int=7)}",
        only=RESOURCES,
        expect=404,
    ),
    Case(
        "unknown_project_tasks",
        path=lambda url: f"/v1/projects/{uuid.UUID(int=7)}/tasks",
        only=("tasks",),
        expect=404,
    ),
    Case("trailing_slash", path=lambda url: url + "/", expect=0),
    Case("head", method="HEAD", expect=405),
    Case("no_token", headers=lambda w, a, m: {}, expect=401),
    Case("garbage_token", headers=lambda w, a, m: {"Authorization": "Bearer x.y.z"}, expect=401),
    Case(
        "expired_token",
        expect=401,
        headers=lambda w, a, m: {
            "Authorization": "Bearer " + m(tenant=w.tenant.slug, scopes="api:read", ttl=-120)
        },
    ),
    Case(
        "no_read_scope",
        expect=403,
        headers=lambda w, a, m: a(w.tenant, sub="x", scopes="api:other"),
    ),
    Case(
        "admin_token",
        expect=403,
        headers=lambda w, a, m: {
            "Authorization": "Bearer " + m(tenant=None, scopes="platform:admin api:read")
        },
    ),
    Case(
        "unknown_tenant",
        expect=403,
        headers=lambda w, a, m: {
            "Authorization": "Bearer " + m(tenant="no-such-tenant", scopes="api:read")
        },
    ),
]


@pytest.mark.parametrize(
    ("route", "case"),
    [(route, case) for case in CASES for route in CACHED_ROUTES if route in case.only],
    ids=lambda value: value if isinstance(value, str) else value.name,
)
async def test_before_routing_and_through_the_routes_answer_the_same(
    route: str,
    case: Case,
    world: World,
    client: httpx.AsyncClient,
    routes_only: httpx.AsyncClient,
    auth: Callable[..., Headers],
    make_token: Any,
) -> None:
    url = case.path(
        CACHED_ROUTES[route].format(**{"project": world.project["id"], "task": world.task["id"]})
    )
    headers = (case.headers or _reader)(world, auth, make_token)
    first = await client.request(case.method, url, headers=headers)
    second = await routes_only.request(case.method, url, headers=headers)
    third = await client.request(case.method, url, headers=headers)  # a hit where cacheable
    if case.expect:
        assert first.status_code == case.expect, first.text
    assert stable(first) == stable(second) == stable(third)


@pytest.mark.parametrize("route", list(CACHED_ROUTES))
async def test_304_rate_limit_and_suspension_answer_the_same_both_ways(
    route: str,
    client: httpx.AsyncClient,
    routes_only: httpx.AsyncClient,
    engine: AsyncEngine,
    settings: Settings,
    auth: Callable[..., Headers],
    admin: Headers,
) -> None:
    tenant = await make_tenant(engine, settings, rate_limit="6/minute")
    headers = auth(tenant)
    project = await post_project(client, headers)
    task = await post_task(client, headers, project["id"])
    url = CACHED_ROUTES[route].format(project=project["id"], task=task["id"])
    etag = (await client.get(url, headers=headers)).headers.get("etag")
    if etag is not None:  # single resources: revalidation
        revalidate = {**headers, "If-None-Match": etag}
        both = [await c.get(url, headers=revalidate) for c in (client, routes_only)]
        assert both[0].status_code == 304 and stable(both[0]) == stable(both[1])
    while (await client.get(url, headers=headers)).status_code == 200:
        pass  # until the minute's budget is spent
    both = [await c.get(url, headers=headers) for c in (client, routes_only)]
    assert both[0].status_code == 429 and stable(both[0]) == stable(both[1])
    assert both[0].headers["x-ratelimit-remaining"] == "0"

    suspended = await client.post(f"/admin/v1/tenants/{tenant.slug}/suspend", headers=admin)
    assert suspended.status_code == 200
    both = [await c.get(url, headers=headers) for c in (client, routes_only)]
    assert_problem(both[0], 403, "tenant_suspended")
    assert stable(both[0]) == stable(both[1])


async def test_a_cached_read_is_answered_before_routing_and_counted_once(
    client: httpx.AsyncClient, world: World, auth: Callable[..., Headers], routed: list[str]
) -> None:
    headers = auth(world.tenant)
    project = await post_project(client, headers)
    url = f"/v1/projects/{project['id']}"
    meter = CacheMeter()
    routed.clear()
    answers = [await client.get(url, headers=headers) for _ in range(3)]
    assert routed == []
    assert meter.delta() == {"hit": 2, "miss": 1, "error": 0}
    assert [remaining(a) for a in answers] == [remaining(answers[0]) - n for n in range(3)]
    assert all(a.json() == project for a in answers)
    refused = await client.get(url.rsplit("/", 1)[0] + "/nope", headers=headers)
    assert_problem(refused, 422, "validation_error")
    assert routed == [url.rsplit("/", 1)[0] + "/nope"]  # the route answers what it refuses


async def test_with_the_cache_off_reads_are_still_served_before_routing(
    settings: Settings, tenant: TenantRecord, auth: Callable[..., Headers]
) -> None:
    async with running_app(settings.model_copy(update={"cache_ttl_seconds": 0})) as (app, client):
        headers = auth(tenant)
        project = await post_project(client, headers)
        answers = [await client.get(f"/v1/projects/{project['id']}", headers=headers) for _ in "ab"]
        assert [a.json() for a in answers] == [project, project]
        assert remaining(answers[1]) == remaining(answers[0]) - 1
