"""Tenant usage: requests by status class, rows per table, storage and quota use against a
tenant with known contents; the fleet listing, largest first; the usage metrics."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.redis.client import build_redis
from app.services import request_usage, usage
from app.services.request_usage import RequestTally, usage_key
from app.services.tenant_keys import TenantKeys
from tests.conftest import MakeToken
from tests.factories import post_project, post_task
from tests.integration.test_plans import create_plan, create_tenant
from tests.metrics_support import parse_samples, value
from tests.support import assert_problem, eventually

Headers = dict[str, str]
KNOWN_ROWS = {"projects": 2, "tasks": 3, "audit_events": 5, "idempotency_keys": 0}


async def measured_rows(
    engine: AsyncEngine, client: httpx.AsyncClient, admin: Headers, slug: str
) -> Callable[[], Any]:
    """A probe that refreshes the tenant's figures and answers its rows: the statistics the
    refresh reads reach PostgreSQL's shared view within seconds of a commit."""

    async def probe() -> object:
        await usage.refresh(engine, [slug])
        body = (await client.get(f"/admin/v1/tenants/{slug}/usage", headers=admin)).json()
        return body["rows"]

    return probe


async def known_tenant(
    client: httpx.AsyncClient,
    admin: Headers,
    make_token: MakeToken,
    unique_slug: Callable[[str], str],
    **quotas: object,
) -> tuple[str, Headers]:
    """A tenant on a plan of `quotas`, holding 2 projects and 3 tasks, after 5 requests
    answered 201, 2 answered 200 and 3 answered 404."""
    plan = await create_plan(client, admin, **quotas)
    slug = unique_slug("usage")
    assert (await create_tenant(client, admin, slug, plan=plan)).status_code == 201
    headers = {"Authorization": f"Bearer {make_token(tenant=slug)}"}
    one, two = await post_project(client, headers), await post_project(client, headers)
    for project in (one, one, two):
        await post_task(client, headers, project["id"])
    for _ in range(2):
        assert (await client.get("/v1/projects", headers=headers)).status_code == 200
    for _ in range(3):
        missing = await client.get(f"/v1/projects/{uuid.uuid4()}", headers=headers)
        assert missing.status_code == 404
    return slug, headers


async def test_a_tenants_usage_has_its_requests_rows_storage_and_quota_use(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin: Headers,
    make_token: MakeToken,
    unique_slug: Callable[[str], str],
    engine: AsyncEngine,
) -> None:
    started = datetime.now(UTC)
    slug, _ = await known_tenant(client, admin, make_token, unique_slug, max_projects=4)
    await app.state.request_tally.flush()
    await eventually(await measured_rows(engine, client, admin, slug), KNOWN_ROWS, within=15)

    response = await client.get(f"/admin/v1/tenants/{slug}/usage", headers=admin)
    assert response.status_code == 200, response.text
    body = response.json()
    classes = {"1xx": 0, "2xx": 7, "3xx": 0, "4xx": 3, "5xx": 0}
    assert body["requests"] == {"last_hour": classes, "last_day": classes}
    last = datetime.fromisoformat(body["last_request_at"])
    assert started - timedelta(seconds=1) <= last <= datetime.now(UTC)
    assert body["tenant"] == slug
    async with engine.connect() as conn:
        schema = f"tenant_{slug.replace('-', '_')}"
        tables = await conn.scalar(
            text(
                "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = :schema AND c.relkind = 'r' AND c.relname <> 'alembic_version'"
            ),
            {"schema": schema},
        )
    assert body["storage_bytes"] == tables > 0
    assert datetime.fromisoformat(body["refreshed_at"]) >= started
    quotas = {use["quota"]: use for use in body["quotas"]}
    assert quotas["max_projects"] == {
        "quota": "max_projects",
        "limit": 4,
        "usage": 2,
        "percent": 50.0,
    }
    assert quotas["max_tasks"] == {"quota": "max_tasks", "limit": None, "usage": 3, "percent": None}


async def test_a_tenant_never_measured_shows_zero_figures_and_an_unknown_one_404(
    client: httpx.AsyncClient, admin: Headers, unique_slug: Callable[[str], str]
) -> None:
    slug = unique_slug("fresh")
    await create_tenant(client, admin, slug)
    body = (await client.get(f"/admin/v1/tenants/{slug}/usage", headers=admin)).json()
    assert (body["storage_bytes"], body["rows"], body["refreshed_at"]) == (0, {}, None)
    assert body["requests"]["last_day"]["2xx"] == 0
    missing = await client.get(f"/admin/v1/tenants/{unique_slug('none')}/usage", headers=admin)
    assert_problem(missing, 404, "tenant_not_found")


async def test_the_fleet_is_listed_largest_first_page_by_page(
    client: httpx.AsyncClient,
    admin: Headers,
    make_token: MakeToken,
    unique_slug: Callable[[str], str],
    engine: AsyncEngine,
) -> None:
    small = unique_slug("small")
    await create_tenant(client, admin, small)
    big, _ = await known_tenant(client, admin, make_token, unique_slug)
    assert await usage.refresh(engine) >= 2
    seen: list[dict[str, Any]] = []
    cursor = ""
    while True:
        page = await client.get(
            "/admin/v1/usage", params={"limit": 2, "cursor": cursor}, headers=admin
        )
        assert page.status_code == 200, page.text
        seen += page.json()["items"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    sizes = [item["storage_bytes"] for item in seen]
    assert sizes == sorted(sizes, reverse=True)
    tenants = [item["tenant"] for item in seen]
    assert len(tenants) == len(set(tenants))
    assert tenants.index(big) < tenants.index(small)
    bad = await client.get("/admin/v1/usage", params={"cursor": "nope"}, headers=admin)
    assert_problem(bad, 422, "invalid_cursor")


async def test_metrics_show_storage_and_quota_use_of_each_tenant(
    client: httpx.AsyncClient,
    admin: Headers,
    make_token: MakeToken,
    unique_slug: Callable[[str], str],
    engine: AsyncEngine,
) -> None:
    slug, _ = await known_tenant(client, admin, make_token, unique_slug, max_projects=4)
    await eventually(await measured_rows(engine, client, admin, slug), KNOWN_ROWS, within=15)
    stored = (await client.get(f"/admin/v1/tenants/{slug}/usage", headers=admin)).json()
    samples = parse_samples((await client.get("/metrics")).text)
    assert value(samples, "tessera_tenant_storage_bytes", tenant=slug) == stored["storage_bytes"]
    ratio = value(samples, "tessera_tenant_quota_used_ratio", tenant=slug, quota="max_projects")
    assert ratio == 0.5
    assert not [
        s
        for s in samples
        if s.name == "tessera_tenant_quota_used_ratio"
        and s.labels == {"tenant": slug, "quota": "max_tasks"}
    ]


async def test_a_deleted_tenants_request_counts_go_with_it(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin: Headers,
    make_token: MakeToken,
    unique_slug: Callable[[str], str],
) -> None:
    slug, headers = await known_tenant(client, admin, make_token, unique_slug)
    await app.state.request_tally.flush()
    await client.post(f"/admin/v1/tenants/{slug}/suspend", headers=admin)
    assert (await client.delete(f"/admin/v1/tenants/{slug}", headers=admin)).status_code == 204
    assert (await create_tenant(client, admin, slug)).status_code == 201
    body = (await client.get(f"/admin/v1/tenants/{slug}/usage", headers=admin)).json()
    assert body["requests"]["last_hour"]["2xx"] == 0
    assert body["last_request_at"] is None


async def test_request_counts_fall_out_of_the_hour_and_the_day_and_old_buckets_go(
    settings: Settings, unique_slug: Callable[[str], str], redis_client: aioredis.Redis
) -> None:
    now = [1_800_000_000.0]  # a 5-minute boundary and an hour boundary
    tally = RequestTally(clock=lambda: now[0])
    redis = build_redis(settings)
    tally.bind(redis, timeout=1.0)
    keys = TenantKeys(unique_slug("clock"), uuid.uuid4())
    try:
        for status in (200, 201, 404, 503):
            tally.record(keys.prefix, status)
        await tally.flush()
        now[0] += 2 * 3600  # two hours on: out of the last hour, still in the day
        tally.record(keys.prefix, 200)
        await tally.flush()
        counts = await tally.counts(keys)
        assert counts is not None
        assert counts.last_hour == {"1xx": 0, "2xx": 1, "3xx": 0, "4xx": 0, "5xx": 0}
        assert counts.last_day == {"1xx": 0, "2xx": 3, "3xx": 0, "4xx": 1, "5xx": 1}
        assert counts.last_request_at == datetime.fromtimestamp(now[0], UTC)
        now[0] += 23 * 3600  # the first requests are now 25 hours old
        tally.record(keys.prefix, 200)
        await tally.flush()
        counts = await tally.counts(keys)
        assert counts is not None
        assert counts.last_day["2xx"] == 2
        assert counts.last_day["5xx"] == 0
        # Requests of four classes in each of 100 five-minute buckets (400 fields of them):
        # the hash keeps about the buckets that still count, not all of them.
        for _ in range(100):
            now[0] += 300
            for status in (101, 200, 404, 503):
                tally.record(keys.prefix, status)
            await tally.flush()
        assert await redis_client.hlen(usage_key(keys.prefix)) <= 161 + 4 * 2
        counts = await tally.counts(keys)
        assert counts is not None
        assert counts.last_hour["2xx"] == 12
    finally:
        await tally.aclose()
        await redis.aclose()


@pytest.mark.parametrize("batch", [request_usage.BATCH, 1])
async def test_a_flush_of_many_tenants_goes_in_batches_and_counts_each_alone(
    settings: Settings,
    unique_slug: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
    batch: int,
) -> None:
    """450 tenants in one flush: 9 script calls of 50 keys (one each on a Cluster, batch
    1), and each tenant's hash gets its own counts, none of another's."""
    monkeypatch.setattr(request_usage, "BATCH", batch)
    tally = RequestTally()
    redis = build_redis(settings)
    tally.bind(redis, timeout=1.0)
    tenants = [TenantKeys(unique_slug("many"), uuid.uuid4()) for _ in range(450)]
    try:
        for number, keys in enumerate(tenants):
            for _ in range(number % 3 + 1):
                tally.record(keys.prefix, 200)
            if number % 2:
                tally.record(keys.prefix, 404)
        await tally.flush()
        for number in (0, 1, 49, 50, 51, 199, 200, 201, 399, 400, 449):
            counts = await tally.counts(tenants[number])
            assert counts is not None
            assert counts.last_hour["2xx"] == number % 3 + 1, number
            assert counts.last_hour["4xx"] == number % 2, number
            assert counts.last_request_at is not None
    finally:
        await tally.aclose()
        for keys in tenants:
            await tally.forget(keys)
        await redis.aclose()


async def test_the_refresh_connection_never_goes_back_to_the_pool(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its backend read the catalog of every tenant's schema (about 40 KiB each): it exits
    after the refresh instead of serving requests with that cache."""
    from app.db.repositories import usage as usage_repo

    backends: list[int] = []
    measure = usage_repo.refresh

    async def watched(conn: Any, slugs: list[str] | None = None) -> int:
        backends.append(int(await conn.scalar(text("SELECT pg_backend_pid()"))))
        return await measure(conn, slugs)

    monkeypatch.setattr(usage_repo, "refresh", watched)
    assert await usage.refresh_unless_running(engine) is not None
    (pid,) = backends

    async def alive() -> int:
        async with engine.connect() as conn:
            found = await conn.scalar(
                text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
            )
        return int(found or 0)

    await eventually(alive, 0, within=5.0)
