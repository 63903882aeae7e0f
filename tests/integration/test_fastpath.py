"""Cached reads answered before routing (app/api/fastpath.py), against real PostgreSQL and Redis.

A read the fast path answers must be indistinguishable from the route's own answer, be
counted against the rate limit exactly once, and never answer what the routes would refuse.
`routed` counts the requests that reached the tenant dependency, i.e. the routes.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest
from fastapi import FastAPI, Request

from app.api.dependencies.auth import PrincipalDep
from app.api.dependencies.tenant import get_current_tenant
from app.api.endpoints.fast_reads import FAST_READS
from app.api.fastpath import _fast_routes
from app.core import metrics
from app.core.config import Settings
from app.db.repositories.tenants import TenantRecord
from app.services.tenants import Tenant
from tests.factories import post_project, post_task
from tests.metrics_support import CacheMeter
from tests.support import assert_problem, running_app

Headers = dict[str, str]

# Headers that differ between any two responses, whoever answers.
VARYING = {"x-request-id", "x-ratelimit-remaining", "x-ratelimit-reset"}


@pytest.fixture
def routed(app: FastAPI) -> Iterator[list[str]]:
    calls: list[str] = []

    async def counting_tenant(request: Request, principal: PrincipalDep) -> Tenant:
        calls.append(request.url.path)
        return await get_current_tenant(request, principal)

    app.dependency_overrides[get_current_tenant] = counting_tenant
    try:
        yield calls
    finally:
        del app.dependency_overrides[get_current_tenant]


def stable(response: httpx.Response) -> tuple[int, bytes, dict[str, str]]:
    headers = {k: v for k, v in response.headers.items() if k not in VARYING}
    return response.status_code, response.content, headers


def remaining(response: httpx.Response) -> int:
    return int(response.headers["x-ratelimit-remaining"])


def test_every_fast_read_is_a_get_route_of_the_app(app: FastAPI) -> None:
    assert [route.route.path_format for route in _fast_routes(app.routes)] == list(FAST_READS)


async def test_a_hit_answered_before_routing_is_the_routes_own_answer(
    client: httpx.AsyncClient,
    tenant: TenantRecord,
    auth: Callable[..., Headers],
    routed: list[str],
) -> None:
    writer = auth(tenant)
    project = await post_project(client, writer)
    task = await post_task(client, writer, project["id"])
    urls = [
        f"/v1/projects/{project['id']}",
        f"/v1/tasks/{task['id']}",
        "/v1/projects",
        "/v1/projects?limit=5",
        f"/v1/projects/{project['id']}/tasks",
        f"/v1/projects/{project['id']}/tasks?limit=1",
    ]
    for url in urls:
        await client.get(url, headers=writer)  # a miss: the route loads and stores it
    for number, url in enumerate(urls):
        reader = auth(tenant, sub=f"reader-{number}", scopes="api:read")  # never seen yet
        routed.clear()
        meter = CacheMeter()
        by_route = await client.get(url, headers=reader)  # unknown token: the routes answer
        before_routing = await client.get(url, headers=reader)  # now a remembered token
        assert routed == [url.partition("?")[0]], url
        assert meter.delta() == {"hit": 2, "miss": 0, "error": 0}, url
        assert by_route.status_code == 200, by_route.text
        assert stable(before_routing) == stable(by_route), url
        assert remaining(before_routing) == remaining(by_route) - 1


async def test_if_none_match_answers_the_same_304_before_routing(
    client: httpx.AsyncClient, tenant: TenantRecord, auth: Callable[..., Headers], routed: list[str]
) -> None:
    headers = auth(tenant)
    project = await post_project(client, headers)
    url = f"/v1/projects/{project['id']}"
    etag = (await client.get(url, headers=headers)).headers["etag"]
    reader = {**auth(tenant, sub="revalidating"), "If-None-Match": etag}
    routed.clear()
    by_route = await client.get(url, headers=reader)
    before_routing = await client.get(url, headers=reader)
    assert routed == [url]
    assert by_route.status_code == 304
    assert stable(before_routing) == stable(by_route)
    stale = await client.get(url, headers={**reader, "If-None-Match": '"stale"'})
    assert stale.status_code == 200 and stale.json() == project


async def test_a_miss_is_loaded_before_routing_as_the_route_loads_it_and_counted_once(
    client: httpx.AsyncClient, tenant: TenantRecord, auth: Callable[..., Headers], routed: list[str]
) -> None:
    headers = auth(tenant)
    first, second = await post_project(client, headers), await post_project(client, headers)
    warm = await client.get(f"/v1/projects/{first['id']}", headers=headers)
    routed.clear()
    meter = CacheMeter()
    miss = await client.get(f"/v1/projects/{second['id']}", headers=headers)
    hit = await client.get(f"/v1/projects/{second['id']}", headers=headers)
    assert routed == []
    assert meter.delta() == {"hit": 1, "miss": 1, "error": 0}
    assert miss.json() == hit.json() == second
    assert stable(miss) == stable(hit)
    assert [remaining(r) for r in (warm, miss, hit)] == [remaining(warm) - n for n in range(3)]


async def test_a_missing_resource_gets_the_routes_404_before_routing(
    client: httpx.AsyncClient, tenant: TenantRecord, auth: Callable[..., Headers], routed: list[str]
) -> None:
    url = f"/v1/projects/{uuid.uuid4()}"
    reader = auth(tenant, sub="looking")
    routed.clear()
    by_route = await client.get(url, headers=reader)
    before_routing = await client.get(url, headers=reader)
    assert routed == [url]
    assert_problem(by_route, 404, "project_not_found")

    def without_request_id(response: httpx.Response) -> tuple[int, object, dict[str, str]]:
        body = response.json()
        body.pop("request_id")
        return response.status_code, body, stable(response)[2]

    assert without_request_id(before_routing) == without_request_id(by_route)


async def test_with_the_cache_off_reads_are_still_served_before_routing(
    settings: Settings, tenant: TenantRecord, auth: Callable[..., Headers]
) -> None:
    async with running_app(settings.model_copy(update={"cache_ttl_seconds": 0})) as (app, client):
        headers = auth(tenant)
        project = await post_project(client, headers)
        calls: list[str] = []
        original = app.state.rate_limiter.check

        async def counting_check(*args: object, **kwargs: object) -> object:
            calls.append("check")
            return await original(*args, **kwargs)

        app.state.rate_limiter.check = counting_check  # the routes' way of counting
        answers = [await client.get(f"/v1/projects/{project['id']}", headers=headers) for _ in "ab"]
        assert calls == []
        assert [a.json() for a in answers] == [project, project]
        assert remaining(answers[1]) == remaining(answers[0]) - 1


async def test_what_the_routes_refuse_is_never_answered_before_routing(
    client: httpx.AsyncClient,
    admin: Headers,
    tenant: TenantRecord,
    auth: Callable[..., Headers],
) -> None:
    headers = auth(tenant)
    project = await post_project(client, headers)
    url = f"/v1/projects/{project['id']}"
    assert (await client.get(url, headers=headers)).status_code == 200  # cached now

    no_scope = auth(tenant, sub="no-scope", scopes="api:other")
    for _ in range(2):  # the second time with a remembered token
        assert_problem(await client.get(url, headers=no_scope), 403, "insufficient_scope")
    other_spelling = f"/v1/projects/{project['id'].upper()}"  # the routes parse it
    assert (await client.get(other_spelling, headers=headers)).json() == project

    suspended = await client.post(f"/admin/v1/tenants/{tenant.slug}/suspend", headers=admin)
    assert suspended.status_code == 200
    assert_problem(await client.get(url, headers=headers), 403, "tenant_suspended")
    await client.post(f"/admin/v1/tenants/{tenant.slug}/resume", headers=admin)
    assert (await client.get(url, headers=headers)).status_code == 200


async def test_a_refused_hit_is_the_routes_429_and_counts_one_rejection(
    client: httpx.AsyncClient,
    admin: Headers,
    tenant: TenantRecord,
    auth: Callable[..., Headers],
) -> None:
    headers = auth(tenant)
    project = await post_project(client, headers)  # one request of the minute
    url = f"/v1/projects/{project['id']}"
    patched = await client.patch(
        f"/admin/v1/tenants/{tenant.slug}", json={"rate_limit": "3/minute"}, headers=admin
    )
    assert patched.status_code == 200
    assert [(await client.get(url, headers=headers)).status_code for _ in range(2)] == [200, 200]
    before = metrics.REGISTRY.get_sample_value(
        "tessera_rate_limit_rejections_total", {"tenant": tenant.slug}
    )
    refused = await client.get(url, headers=headers)
    body = assert_problem(refused, 429, "rate_limited")
    assert body["status"] == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-remaining"] == "0"
    after = metrics.REGISTRY.get_sample_value(
        "tessera_rate_limit_rejections_total", {"tenant": tenant.slug}
    )
    assert (after or 0) - (before or 0) == 1
