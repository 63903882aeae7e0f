"""Per-tenant rate limits over HTTP: set through the admin API, shared by replicas through
Redis, in force within a second, and what happens when Redis is down."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from app import metrics
from app.core.config import Settings
from app.db.repositories.tenants import TenantRecord
from tests.redis_layer.redis_servers import free_port
from tests.support import assert_problem, count_rows, running_app

Headers = dict[str, str]


async def create_tenant(
    client: httpx.AsyncClient, admin: Headers, slug: str, **body: object
) -> None:
    response = await client.post(
        "/admin/v1/tenants", json={"slug": slug, "name": "Limited", **body}, headers=admin
    )
    assert response.status_code == 201, response.text


def tenant_headers(make_token: Callable[..., str], slug: str) -> Headers:
    return {"Authorization": f"Bearer {make_token(tenant=slug)}"}


def rejections(slug: str) -> float:
    sample = metrics.REGISTRY.get_sample_value(
        "tessera_rate_limit_rejections_total", {"tenant": slug}
    )
    return sample or 0.0


async def test_a_tenant_limited_to_5_per_minute_gets_5_then_429_and_others_are_unaffected(
    client: httpx.AsyncClient,
    admin: Headers,
    make_token: Callable[..., str],
    unique_slug: Callable[[str], str],
    other_tenant: TenantRecord,
) -> None:
    slug = unique_slug("five")
    await create_tenant(client, admin, slug)
    patched = await client.patch(
        f"/admin/v1/tenants/{slug}", json={"rate_limit": "5/minute"}, headers=admin
    )
    assert patched.json()["rate_limit"] == "5/minute"
    limited, neighbour = (
        tenant_headers(make_token, slug),
        tenant_headers(make_token, other_tenant.slug),
    )

    started = time.time()
    allowed = [await client.get("/v1/tenant", headers=limited) for _ in range(5)]
    for remaining, response in zip(range(4, -1, -1), allowed, strict=True):
        assert response.status_code == 200
        assert response.headers["x-ratelimit-limit"] == "5"
        assert response.headers["x-ratelimit-remaining"] == str(remaining)
        reset = int(response.headers["x-ratelimit-reset"])
        assert started < reset <= math.ceil(started) + 61
        assert "retry-after" not in response.headers

    refused = await client.get("/v1/projects", headers=limited)  # every route counts
    assert_problem(refused, 429, "rate_limited")
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-limit"] == "5"
    assert refused.headers["x-ratelimit-remaining"] == "0"
    # The same window: its end, rounded up to a second, seen a few milliseconds apart.
    window_end = int(allowed[-1].headers["x-ratelimit-reset"])
    assert abs(int(refused.headers["x-ratelimit-reset"]) - window_end) <= 1
    assert rejections(slug) == 1

    # A refused request counts against nothing, and another tenant keeps its own limit.
    assert_problem(
        await client.post("/v1/projects", json={"name": "x"}, headers=limited), 429, "rate_limited"
    )
    for _ in range(10):
        response = await client.get("/v1/tenant", headers=neighbour)
        assert response.status_code == 200
        assert response.headers["x-ratelimit-limit"] == "600"
    assert rejections(other_tenant.slug) == 0


async def test_two_replicas_sharing_redis_enforce_one_limit(
    client: httpx.AsyncClient,
    second_client: httpx.AsyncClient,
    admin: Headers,
    make_token: Callable[..., str],
    unique_slug: Callable[[str], str],
) -> None:
    slug = unique_slug("six")
    await create_tenant(client, admin, slug, rate_limit="6/minute")
    headers = tenant_headers(make_token, slug)
    replicas = [client, second_client]
    statuses = [
        (await replicas[i % 2].get("/v1/tenant", headers=headers)).status_code for i in range(12)
    ]
    assert statuses == [200] * 6 + [429] * 6


async def test_a_changed_rate_limit_applies_on_every_replica_within_a_second(
    client: httpx.AsyncClient,
    second_client: httpx.AsyncClient,
    admin: Headers,
    make_token: Callable[..., str],
    unique_slug: Callable[[str], str],
) -> None:
    slug = unique_slug("change")
    await create_tenant(client, admin, slug, rate_limit="1000/minute")
    headers = tenant_headers(make_token, slug)
    # The other replica has the tenant in its registry, with the old limit.
    for replica in (client, second_client):
        assert (await replica.get("/v1/tenant", headers=headers)).headers[
            "x-ratelimit-limit"
        ] == "1000"

    changed = await client.patch(
        f"/admin/v1/tenants/{slug}", json={"rate_limit": "3/minute"}, headers=admin
    )
    assert changed.status_code == 200
    started = time.monotonic()
    # Already 2 used in the running minute: a third is allowed, then 429 wherever it lands.
    while True:
        response = await second_client.get("/v1/tenant", headers=headers)
        if response.status_code == 429:
            break
        assert time.monotonic() - started < 1.5, "the new limit did not apply within 1 s"
        await asyncio.sleep(0.05)
    assert response.headers["x-ratelimit-limit"] == "3"
    assert_problem(await client.get("/v1/tenant", headers=headers), 429, "rate_limited")


async def test_with_fail_open_false_redis_down_answers_503_and_changes_nothing(
    settings: Settings, tenant: TenantRecord, headers: Headers, engine: AsyncEngine
) -> None:
    down = settings.model_copy(
        update={"redis_url": f"redis://127.0.0.1:{free_port()}/0", "rate_limit_fail_open": False}
    )
    async with running_app(down) as (_, client):
        for method, url in (("GET", "/v1/tenant"), ("GET", "/v1/projects")):
            started = time.monotonic()
            response = await client.request(method, url, headers=headers)
            assert time.monotonic() - started < 1.0
            assert_problem(response, 503, "rate_limiter_unavailable")
            assert response.headers["retry-after"] == "1"
            assert "x-ratelimit-limit" not in response.headers
        refused = await client.post("/v1/projects", json={"name": "never"}, headers=headers)
        assert_problem(refused, 503, "rate_limiter_unavailable")
        # /readyz still answers: Redis is optional for readiness.
        assert (await client.get("/readyz")).status_code == 200
    assert await count_rows(engine, tenant, "projects") == 0


async def test_with_fail_open_redis_down_serves_without_the_headers(
    settings: Settings, headers: Headers
) -> None:
    down = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    async with running_app(down) as (_, client):
        response = await client.get("/v1/tenant", headers=headers)
        assert response.status_code == 200
        assert not any(name.startswith("x-ratelimit") for name in response.headers)
