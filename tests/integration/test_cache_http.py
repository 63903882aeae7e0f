"""The read-through cache over HTTP, against real PostgreSQL and Redis, with two replicas.

What is cached: single projects and tasks, and pages of the project and task listings.
`GET /v1/tenant` and audit events are read without it (README, "Rate limits and caching").
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.db import pool as pool_module
from app.db.pool import TenantConnections
from app.db.repositories.tenants import TenantRecord
from app.db.tenancy import TenantSchema
from app.services.cache_entries import CacheKey
from app.services.tenant_keys import TenantKeys
from tests.factories import post_project, post_task
from tests.metrics_support import CacheMeter, parse_samples, value
from tests.redis_layer.redis_servers import RestartableRedis, free_port
from tests.support import assert_problem, running_app

Headers = dict[str, str]


@contextmanager
def counting_pins() -> Iterator[list[str]]:
    """Tenant transactions begun: each is pinned first thing (one BEGIN and pin, whether on
    a connection from the pool or on a parked one), so a cached read must begin none."""
    pins: list[str] = []
    build = pool_module.begin_pinned_sql

    def record(tenant: TenantSchema, **options: Any) -> str:
        pins.append(tenant.schema)
        return build(tenant, **options)

    pool_module.begin_pinned_sql = record
    try:
        yield pins
    finally:
        pool_module.begin_pinned_sql = build


def location(tenant: TenantRecord) -> TenantSchema:
    return TenantSchema(schema=tenant.schema, role=tenant.db_role)


async def read_on_both(
    clients: list[httpx.AsyncClient], url: str, headers: Headers
) -> list[httpx.Response]:
    return [await c.get(url, headers=headers) for c in clients]


async def warm(clients: list[httpx.AsyncClient], url: str, headers: Headers) -> None:
    """Put `url` in the cache from the first replica and check the second one hits it."""
    first = await clients[0].get(url, headers=headers)
    meter = CacheMeter()
    second = await clients[1].get(url, headers=headers)
    assert meter.delta() == {"hit": 1, "miss": 0, "error": 0}, url
    assert (second.status_code, second.content) == (first.status_code, first.content)


# --- hits ------------------------------------------------------------------------------


async def test_repeated_reads_are_hits_that_open_no_transaction(
    app: FastAPI, client: httpx.AsyncClient, headers: Headers
) -> None:
    project = await post_project(client, headers)
    task = await post_task(client, headers, project["id"])
    urls = [
        f"/v1/projects/{project['id']}",
        "/v1/projects",
        "/v1/projects?limit=5",
        f"/v1/projects/{project['id']}/tasks",
        f"/v1/projects/{project['id']}/tasks?status={task['status']}&label=x",
        f"/v1/tasks/{task['id']}",
    ]
    meter = CacheMeter()
    first = [await client.get(url, headers=headers) for url in urls]
    assert meter.delta() == {"hit": 0, "miss": len(urls), "error": 0}

    meter = CacheMeter()
    with counting_pins() as pins:
        again = [await client.get(url, headers=headers) for url in urls]
    assert meter.delta() == {"hit": len(urls), "miss": 0, "error": 0}
    assert pins == []
    for before, after in zip(first, again, strict=True):
        assert after.status_code == 200
        assert after.content == before.content
        assert after.headers.get("etag") == before.headers.get("etag")
        assert after.headers["content-type"] == "application/json"
        assert after.headers["x-ratelimit-limit"] == "600"  # the limiter still counts hits
    assert again[0].headers["etag"] == f'"{project["id"]}-1"'
    assert again[-1].headers["etag"] == f'"{task["id"]}-1"'
    assert "etag" not in again[1].headers  # pages carry no ETag


async def test_the_hits_are_visible_on_the_metrics_endpoint(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    project = await post_project(client, headers)
    url = f"/v1/projects/{project['id']}"
    before = parse_samples((await client.get("/metrics")).text)
    for _ in range(3):
        assert (await client.get(url, headers=headers)).status_code == 200
    after = parse_samples((await client.get("/metrics")).text)

    def delta(result: str) -> float:
        name = "tessera_cache_requests_total"
        return value(after, name, result=result) - value(before, name, result=result)

    assert (delta("miss"), delta("hit"), delta("error")) == (1, 2, 0)


async def test_default_and_explicit_page_parameters_share_one_entry(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    await post_project(client, headers)
    await client.get("/v1/projects", headers=headers)
    meter = CacheMeter()
    await client.get("/v1/projects?limit=20", headers=headers)
    assert meter.delta()["hit"] == 1


async def test_if_none_match_answers_304_from_the_cached_etag(
    app: FastAPI, client: httpx.AsyncClient, headers: Headers
) -> None:
    project = await post_project(client, headers)
    task = await post_task(client, headers, project["id"])
    for url, tag in (
        (f"/v1/projects/{project['id']}", f'"{project["id"]}-1"'),
        (f"/v1/tasks/{task['id']}", f'"{task["id"]}-1"'),
    ):
        await client.get(url, headers=headers)
        meter = CacheMeter()
        with counting_pins() as pins:
            response = await client.get(url, headers={**headers, "If-None-Match": tag})
            weak = await client.get(url, headers={**headers, "If-None-Match": f"W/{tag}, x"})
            other = await client.get(url, headers={**headers, "If-None-Match": '"other-1"'})
        assert meter.delta() == {"hit": 3, "miss": 0, "error": 0}
        assert pins == []
        assert (response.status_code, response.content) == (304, b"")
        assert response.headers["etag"] == tag
        assert weak.status_code == 304
        assert other.status_code == 200 and other.headers["etag"] == tag


async def test_a_changed_resource_answers_200_to_its_old_etag(
    client: httpx.AsyncClient, second_client: httpx.AsyncClient, headers: Headers
) -> None:
    project = await post_project(client, headers, name="before")
    url = f"/v1/projects/{project['id']}"
    old_tag = (await client.get(url, headers=headers)).headers["etag"]
    await second_client.patch(url, json={"name": "after"}, headers=headers)
    response = await client.get(url, headers={**headers, "If-None-Match": old_tag})
    assert response.status_code == 200
    assert response.json()["name"] == "after"
    assert response.headers["etag"] == f'"{project["id"]}-2"'


# --- isolation -------------------------------------------------------------------------


async def test_tenant_b_never_receives_tenant_a_cached_page_for_the_same_path(
    client: httpx.AsyncClient,
    second_client: httpx.AsyncClient,
    tenant: TenantRecord,
    other_tenant: TenantRecord,
    auth: Callable[..., Headers],
) -> None:
    a, b = auth(tenant), auth(other_tenant)
    mine = await post_project(client, a, name="A's")
    theirs = await post_project(client, b, name="B's")
    for replica in (client, second_client):
        # Tenant A's entries are cached first, on both replicas, for these exact paths.
        assert (await replica.get("/v1/projects", headers=a)).json()["items"] == [mine]
        await replica.get(f"/v1/projects/{mine['id']}/tasks", headers=a)
    for replica in (client, second_client):
        assert (await replica.get("/v1/projects", headers=b)).json()["items"] == [theirs]
        assert (await replica.get("/v1/projects?limit=20", headers=b)).json()["items"] == [theirs]
        assert_problem(
            await replica.get(f"/v1/projects/{mine['id']}", headers=b), 404, "project_not_found"
        )
        assert_problem(
            await replica.get(f"/v1/projects/{mine['id']}/tasks", headers=b),
            404,
            "project_not_found",
        )
    # ...and B's page, now cached too, is not served back to A.
    assert (await client.get("/v1/projects", headers=a)).json()["items"] == [mine]


# --- invalidation ----------------------------------------------------------------------


async def test_reads_right_after_each_write_reflect_it_on_both_replicas(
    client: httpx.AsyncClient, second_client: httpx.AsyncClient, headers: Headers
) -> None:
    both = [client, second_client]

    # Projects: create, patch.
    await warm(both, "/v1/projects", headers)
    project = await post_project(client, headers, name="one")
    for response in await read_on_both(both, "/v1/projects", headers):
        assert [p["id"] for p in response.json()["items"]] == [project["id"]]
    project_url = f"/v1/projects/{project['id']}"
    await warm(both, project_url, headers)
    patched = await second_client.patch(project_url, json={"name": "two"}, headers=headers)
    assert patched.status_code == 200
    for response in await read_on_both(both, project_url, headers):
        assert response.json()["name"] == "two"
        assert response.headers["etag"] == f'"{project["id"]}-2"'
    for response in await read_on_both(both, "/v1/projects", headers):
        assert response.json()["items"][0]["name"] == "two"

    # Tasks: create, patch (seen through plain and filtered pages), delete.
    tasks_url = f"{project_url}/tasks"
    done_url, todo_url = f"{tasks_url}?status=done", f"{tasks_url}?status=todo"
    for url in (tasks_url, done_url, todo_url):
        await warm(both, url, headers)
    task = await post_task(client, headers, project["id"], status="todo")
    for response in await read_on_both(both, tasks_url, headers):
        assert [t["id"] for t in response.json()["items"]] == [task["id"]]
    task_url = f"/v1/tasks/{task['id']}"
    for url in (task_url, done_url, todo_url):
        await warm(both, url, headers)
    patched = await second_client.patch(task_url, json={"status": "done"}, headers=headers)
    assert patched.status_code == 200
    for response in await read_on_both(both, task_url, headers):
        assert response.json()["status"] == "done"
        assert response.headers["etag"] == f'"{task["id"]}-2"'
    for response in await read_on_both(both, done_url, headers):
        assert [t["id"] for t in response.json()["items"]] == [task["id"]]
    for response in await read_on_both(both, todo_url, headers):
        assert response.json()["items"] == []
    await warm(both, tasks_url, headers)
    assert (await client.delete(task_url, headers=headers)).status_code == 204
    for response in await read_on_both(both, task_url, headers):
        assert_problem(response, 404, "task_not_found")
    for response in await read_on_both(both, tasks_url, headers):
        assert response.json()["items"] == []

    # Project delete: the project, its task pages and its tasks' own entries all go.
    survivor = await post_task(second_client, headers, project["id"])
    survivor_url = f"/v1/tasks/{survivor['id']}"
    for url in (project_url, tasks_url, survivor_url, "/v1/projects"):
        await warm(both, url, headers)
    assert (await second_client.delete(project_url, headers=headers)).status_code == 204
    for response in await read_on_both(both, project_url, headers):
        assert_problem(response, 404, "project_not_found")
    for response in await read_on_both(both, tasks_url, headers):
        assert_problem(response, 404, "project_not_found")
    for response in await read_on_both(both, survivor_url, headers):
        assert_problem(response, 404, "task_not_found")
    for response in await read_on_both(both, "/v1/projects", headers):
        assert response.json()["items"] == []


async def test_a_project_write_leaves_other_entries_cached(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    kept, changed = await post_project(client, headers), await post_project(client, headers)
    task = await post_task(client, headers, kept["id"])
    urls = [
        f"/v1/projects/{kept['id']}",
        f"/v1/tasks/{task['id']}",
        f"/v1/projects/{kept['id']}/tasks",
    ]
    for url in urls:
        await client.get(url, headers=headers)
    await client.patch(f"/v1/projects/{changed['id']}", json={"name": "x"}, headers=headers)
    meter = CacheMeter()
    for url in urls:
        await client.get(url, headers=headers)
    assert meter.delta()["hit"] == len(urls)


async def test_writes_invalidate_after_their_commit_and_failed_ones_not_at_all(
    app: FastAPI,
    client: httpx.AsyncClient,
    headers: Headers,
    tenant: TenantRecord,
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = app.state.cache
    invalidate, bump_generation = cache.invalidate, cache.bump_generation
    project = await post_project(client, headers, name="old")
    seen: list[tuple[str, object]] = []

    async def committed_name() -> object:
        # What a reader arriving at this instant would load from PostgreSQL.
        async with TenantConnections(engine).transaction(location(tenant)) as conn:
            return await conn.scalar(
                text("SELECT name FROM projects WHERE id = :id"), {"id": project["id"]}
            )

    async def observed_invalidate(keys_of: TenantKeys, *keys: CacheKey) -> None:
        seen.append(("invalidate", await committed_name()))
        await invalidate(keys_of, *keys)

    async def observed_bump(keys_of: TenantKeys) -> int | None:
        seen.append(("bump", await committed_name()))
        return await bump_generation(keys_of)  # type: ignore[no-any-return]

    monkeypatch.setattr(cache, "invalidate", observed_invalidate)
    monkeypatch.setattr(cache, "bump_generation", observed_bump)
    url = f"/v1/projects/{project['id']}"

    assert (await client.patch(url, json={"name": "new"}, headers=headers)).status_code == 200
    assert seen == [("invalidate", "new")]

    stale_precondition = {**headers, "If-Match": f'"{project["id"]}-1"'}
    assert_problem(
        await client.patch(url, json={"name": "newer"}, headers=stale_precondition),
        412,
        "precondition_failed",
    )
    assert_problem(
        await client.post(
            f"/v1/projects/{uuid.uuid4()}/tasks", json={"title": "t"}, headers=headers
        ),
        404,
        "project_not_found",
    )
    assert len(seen) == 1

    assert (await client.delete(url, headers=headers)).status_code == 204
    assert seen[1] == ("bump", None)  # the row was already gone for everyone


async def test_an_idempotent_replay_invalidates_nothing(
    app: FastAPI, client: httpx.AsyncClient, headers: Headers, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = app.state.cache
    invalidate = cache.invalidate
    calls: list[tuple[CacheKey, ...]] = []

    async def counted(keys_of: TenantKeys, *keys: CacheKey) -> None:
        calls.append(keys)
        await invalidate(keys_of, *keys)

    monkeypatch.setattr(cache, "invalidate", counted)
    keyed = {**headers, "Idempotency-Key": f"k-{uuid.uuid4()}"}
    first = await client.post("/v1/projects", json={"name": "once"}, headers=keyed)
    replay = await client.post("/v1/projects", json={"name": "once"}, headers=keyed)
    assert (first.status_code, replay.headers["idempotent-replayed"]) == (201, "true")
    assert calls == [(CacheKey.pages("projects"),)]


async def test_zero_ttl_reads_from_the_database_and_keeps_nothing_in_redis(
    settings: Settings, headers: Headers, tenant: TenantRecord, redis_client: aioredis.Redis
) -> None:
    async with running_app(settings.model_copy(update={"cache_ttl_seconds": 0})) as (app, client):
        project = await post_project(client, headers, name="a")
        url = f"/v1/projects/{project['id']}"
        meter = CacheMeter()
        with counting_pins() as pins:
            for _ in range(2):
                assert (await client.get(url, headers=headers)).json()["name"] == "a"
        assert len(pins) == 2
        await client.patch(url, json={"name": "b"}, headers=headers)
        assert (await client.get(url, headers=headers)).json()["name"] == "b"
        assert meter.delta() == {"hit": 0, "miss": 0, "error": 0}
        keys = [k async for k in redis_client.scan_iter(match=f"tessera:{{{tenant.slug}}}:*")]
        # Only the limiter's window counter: no entries, versions or generation.
        prefix = TenantKeys(tenant.slug, tenant.id).prefix
        assert [k.decode() for k in keys] == [f"{prefix}rl:60s"]


async def test_a_new_tenant_with_a_deleted_tenants_slug_never_reads_its_entries(
    settings: Settings,
    client: httpx.AsyncClient,
    admin: Headers,
    make_token: Callable[..., str],
    unique_slug: Callable[[str], str],
) -> None:
    slug = unique_slug("reuse")
    tenant_url = f"/admin/v1/tenants/{slug}"
    headers = {"Authorization": f"Bearer {make_token(tenant=slug)}"}
    body = {"slug": slug, "name": "First"}
    assert (await client.post("/admin/v1/tenants", json=body, headers=admin)).status_code == 201
    await post_project(client, headers, name="the first tenant's")
    assert len((await client.get("/v1/projects", headers=headers)).json()["items"]) == 1
    assert (await client.post(f"{tenant_url}/suspend", headers=admin)).status_code == 200
    # Deleted through a replica that cannot reach Redis: its generation bump is lost.
    closed = f"redis://127.0.0.1:{free_port()}/0"
    async with running_app(settings.model_copy(update={"redis_url": closed})) as (_, cut_off):
        assert (await cut_off.delete(tenant_url, headers=admin)).status_code == 204

    body = {"slug": slug, "name": "Second"}
    assert (await client.post("/admin/v1/tenants", json=body, headers=admin)).status_code == 201
    # A token of the new tenant (one of the old tenant's is refused once it is older than the
    # new tenant: tests/integration/test_tenant_identity.py).
    headers = {"Authorization": f"Bearer {make_token(tenant=slug)}"}
    assert (await client.get("/v1/projects", headers=headers)).json()["items"] == []


# --- GET /v1/tenant --------------------------------------------------------------------


async def test_own_tenant_is_not_cached_so_admin_changes_reach_every_replica_within_1s(
    client: httpx.AsyncClient,
    second_client: httpx.AsyncClient,
    headers: Headers,
    admin: Headers,
    tenant: TenantRecord,
) -> None:
    both = [client, second_client]
    meter = CacheMeter()
    for response in await read_on_both(both, "/v1/tenant", headers):
        assert response.json()["name"] == "Acme"
    assert meter.delta() == {"hit": 0, "miss": 0, "error": 0}

    admin_url = f"/admin/v1/tenants/{tenant.slug}"
    patched = await client.patch(admin_url, json={"name": "Renamed", "plan": "free"}, headers=admin)
    assert patched.status_code == 200
    await until_within(1.5, both, "/v1/tenant", headers, lambda r: r.json()["name"] == "Renamed")
    for response in await read_on_both(both, "/v1/tenant", headers):
        assert (response.json()["name"], response.json()["plan"]) == ("Renamed", "free")

    assert (await client.post(f"{admin_url}/suspend", headers=admin)).status_code == 200
    await until_within(1.5, both, "/v1/tenant", headers, lambda r: r.status_code == 403)
    for response in await read_on_both(both, f"/v1/projects/{uuid.uuid4()}", headers):
        assert_problem(response, 403, "tenant_suspended")
    assert (await client.post(f"{admin_url}/resume", headers=admin)).status_code == 200
    await until_within(1.5, both, "/v1/tenant", headers, lambda r: r.status_code == 200)


async def until_within(
    seconds: float,
    clients: list[httpx.AsyncClient],
    url: str,
    headers: Headers,
    condition: Callable[[httpx.Response], bool],
) -> None:
    """Poll `url` on every replica until `condition` holds on all of them, within `seconds`."""
    started = time.monotonic()
    while True:
        responses = await read_on_both(clients, url, headers)
        if all(condition(r) for r in responses):
            return
        if time.monotonic() - started > seconds:
            pytest.fail(f"{url} did not change on every replica within {seconds} s")
        await asyncio.sleep(0.05)


# --- Redis faults ----------------------------------------------------------------------


class Timed:
    """A client whose every call is timed: under a Redis fault none may take a second."""

    def __init__(self, client: httpx.AsyncClient, headers: Headers) -> None:
        self.client, self.headers = client, headers
        self.slowest = 0.0

    async def __call__(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        started = time.monotonic()
        response = await self.client.request(method, url, headers=self.headers, **kwargs)
        self.slowest = max(self.slowest, time.monotonic() - started)
        return response


async def until_cached_and_limited(call: Timed, url: str, seconds: float = 5.0) -> httpx.Response:
    """Read `url` until the limiter's headers are back and the read was a cache hit."""
    deadline = time.monotonic() + seconds
    while True:
        meter = CacheMeter()
        response = await call("GET", url)
        if "x-ratelimit-limit" in response.headers and meter.delta()["hit"] == 1:
            return response
        if time.monotonic() > deadline:
            pytest.fail(f"caching and limiting did not resume within {seconds} s")
        await asyncio.sleep(0.05)


async def test_redis_stopped_mid_run_then_started_again_on_the_same_port(
    settings: Settings, tenant: TenantRecord, headers: Headers, redis_server: RestartableRedis
) -> None:
    timeout = settings.redis_timeout_seconds
    async with running_app(settings.model_copy(update={"redis_url": redis_server.url})) as (
        app,
        client,
    ):
        call = Timed(client, headers)
        project = await post_project(client, headers, name="before")
        url = f"/v1/projects/{project['id']}"
        await call("GET", url)
        await until_cached_and_limited(call, url)
        call.slowest = 0.0
        for _ in range(3):  # what requests take here with Redis up, everything warm
            await call("GET", url)
            await call("GET", "/v1/projects")
        healthy = call.slowest

        redis_server.stop()
        call.slowest = 0.0
        meter = CacheMeter()
        read = await call("GET", url)
        assert (read.status_code, read.json()["name"]) == (200, "before")
        assert "x-ratelimit-limit" not in read.headers  # failing open: nothing true to say
        assert (await call("PATCH", url, json={"name": "during"})).json()["name"] == "during"
        assert (await call("GET", url)).json()["name"] == "during"
        second = (await call("POST", "/v1/projects", json={"name": "second"})).json()
        task = (await call("POST", f"{url}/tasks", json={"title": "t"})).json()
        listed = (await call("GET", "/v1/projects")).json()["items"]
        assert [(p["id"], p["name"]) for p in listed] == [
            (second["id"], "second"),
            (project["id"], "during"),
        ]
        assert (await call("GET", f"{url}/tasks")).json()["items"] == [task]
        assert (await call("DELETE", f"/v1/projects/{second['id']}")).status_code == 204
        assert_problem(await call("GET", f"/v1/projects/{second['id']}"), 404, "project_not_found")
        ready = await call("GET", "/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ok", "checks": {"database": "ok", "redis": "degraded"}}
        assert meter.delta()["hit"] == 0 and meter.delta()["error"] >= 5
        # A stopped Redis refuses connections at once: no request waits as long as one
        # Redis timeout beyond its healthy time (a frozen one is bounded below).
        assert call.slowest < min(healthy + timeout, 1.0), (call.slowest, healthy)

        # Back on the same port, with its data: the entry cached before the PATCH returns
        # with it, and must not be served; caching and limiting resume by themselves.
        redis_server.start()
        with redis.Redis(port=redis_server.port) as direct:
            prefix = TenantKeys(tenant.slug, tenant.id).prefix
            old_entries = direct.keys(f"{prefix}0:projects:{project['id']}@*")
        assert len(old_entries) == 1
        response = await until_cached_and_limited(call, url)
        assert response.json()["name"] == "during"
        assert response.headers["etag"] == f'"{project["id"]}-2"'
        listed = (await call("GET", "/v1/projects")).json()["items"]
        assert [p["id"] for p in listed] == [project["id"]]
        assert (await call("GET", "/readyz")).json()["checks"]["redis"] == "ok"


async def test_frozen_redis_delays_no_request_beyond_one_second(
    settings: Settings, headers: Headers, redis_server: RestartableRedis
) -> None:
    async with running_app(settings.model_copy(update={"redis_url": redis_server.url})) as (
        _,
        client,
    ):
        call = Timed(client, headers)
        project = await post_project(client, headers, name="before")
        url = f"/v1/projects/{project['id']}"
        await call("GET", url)
        await until_cached_and_limited(call, url)

        redis_server.freeze()
        try:
            call.slowest = 0.0
            assert (await call("GET", url)).json()["name"] == "before"
            assert (await call("PATCH", url, json={"name": "frozen"})).status_code == 200
            assert (await call("GET", url)).json()["name"] == "frozen"
            assert (await call("POST", "/v1/projects", json={"name": "x"})).status_code == 201
            assert len((await call("GET", "/v1/projects")).json()["items"]) == 2
            assert (await call("GET", "/v1/tenant")).status_code == 200
            ready = await call("GET", "/readyz")
            assert (ready.status_code, ready.json()["checks"]["redis"]) == (200, "degraded")
            # The contract's bound under a frozen Redis, not a benchmark.
            assert call.slowest < 1.0, call.slowest
        finally:
            redis_server.thaw()

        response = await until_cached_and_limited(call, url)
        assert response.json()["name"] == "frozen"
