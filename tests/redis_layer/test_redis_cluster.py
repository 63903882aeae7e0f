"""The limiter and the cache against a real three-node Redis Cluster, alone and in the app."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.core.config import Settings
from app.redis.client import build_redis
from app.services.cache import TenantCache
from app.services.cache_entries import CachedResponse, CacheKey
from app.services.rate_limiter import RateLimitExceeded, TenantRateLimiter
from tests.factories import post_project, post_task
from tests.metrics_support import CacheMeter
from tests.redis_layer.redis_servers import new_slug, new_tenant, redis_settings
from tests.support import assert_problem, running_app


@pytest.fixture
async def cluster_client(redis_cluster: str) -> AsyncIterator[Any]:
    client = build_redis(redis_settings(redis_cluster, timeout=2.0))
    yield client
    await client.aclose()


async def test_limiter_counts_across_two_cluster_clients(
    redis_cluster: str, cluster_client: Any
) -> None:
    other = build_redis(redis_settings(redis_cluster, timeout=2.0))
    limiters = [
        TenantRateLimiter(c, default_limit="1/minute", fail_open=False, timeout_seconds=2.0)
        for c in (cluster_client, other)
    ]
    # Tenants land on different slots (and so nodes); each gets exactly its own limit.
    for tenant in [new_tenant() for _ in range(6)]:
        allowed = 0
        for attempt in range(8):
            try:
                await limiters[attempt % 2].check(tenant, "4/minute;100/hour")
                allowed += 1
            except RateLimitExceeded:
                pass
        assert allowed == 4
    await other.aclose()


async def test_cache_hits_invalidates_and_bumps_on_a_cluster(cluster_client: Any) -> None:
    cache = TenantCache(cluster_client, ttl_seconds=60, timeout_seconds=2.0)
    calls = 0

    async def load() -> CachedResponse:
        nonlocal calls
        calls += 1
        return CachedResponse(body=str(calls).encode())

    item, page = CacheKey.resource("projects", "p1"), CacheKey.page("projects", "limit=5")
    for tenant in [new_tenant() for _ in range(4)]:
        calls = 0
        for _ in range(2):
            await cache.get_or_load(tenant, item, load)
            await cache.get_or_load(tenant, page, load)
        assert calls == 2
        await cache.invalidate(tenant, item, CacheKey.pages("projects"))
        await cache.get_or_load(tenant, item, load)
        await cache.get_or_load(tenant, page, load)
        assert calls == 4
        await cache.bump_generation(tenant)
        assert (await cache.get_or_load(tenant, item, load)).body == b"5"


async def test_the_api_caches_invalidates_and_limits_on_a_cluster(
    redis_cluster: str, settings: Settings, headers: dict[str, str]
) -> None:
    on_cluster = settings.model_copy(
        update={"redis_url": redis_cluster, "redis_timeout_seconds": 2.0}
    )
    async with running_app(on_cluster) as (_, client):
        project = await post_project(client, headers, name="one")
        task = await post_task(client, headers, project["id"])
        urls = [f"/v1/projects/{project['id']}", "/v1/projects", f"/v1/tasks/{task['id']}"]
        for url in urls:
            await client.get(url, headers=headers)
        meter = CacheMeter()
        for url in urls:
            response = await client.get(url, headers=headers)
            assert response.status_code == 200
            assert response.headers["x-ratelimit-limit"] == "600"
        assert meter.delta() == {"hit": 3, "miss": 0, "error": 0}

        patched = await client.patch(urls[0], json={"name": "two"}, headers=headers)
        assert patched.status_code == 200
        assert (await client.get(urls[0], headers=headers)).json()["name"] == "two"
        assert (await client.get(urls[1], headers=headers)).json()["items"][0]["name"] == "two"
        assert (await client.delete(urls[0], headers=headers)).status_code == 204
        assert_problem(await client.get(urls[2], headers=headers), 404, "task_not_found")
        assert (await client.get(urls[1], headers=headers)).json()["items"] == []
        assert meter.delta()["error"] == 0


def test_a_tenant_keys_share_one_slot() -> None:
    from redis.crc import key_slot

    from app.services.cache_entries import generation_key, version_key
    from app.services.rate_limiter import parse_windows, window_key
    from app.services.tenant_keys import TenantKeys

    tenant = TenantKeys("acme-corp", uuid.uuid4())
    keys = [
        generation_key(tenant),
        version_key(tenant, "projects/p1/tasks"),
        version_key(tenant, "tasks:0b9c6d3e-1111-4222-8333-444455556666"),
        f"{tenant.prefix}7:projects@3:limit=20",
        *(window_key(tenant, w) for w in parse_windows("10/second;600/minute")),
    ]
    assert len({key_slot(k.encode()) for k in keys}) == 1
    # ...the slot of the slug alone: a tenant's slot does not change with its id.
    assert key_slot(keys[0].encode()) == key_slot(b"{acme-corp}")


async def test_a_stale_slot_map_follows_moved_and_is_asked_for_again(redis_cluster: str) -> None:
    """After a failover or a resharding a slot's master changes: the node asked answers
    MOVED, the command goes where it says, and the map is refreshed for the next one."""
    from redis.crc import key_slot

    from app.redis.cluster import RespCluster

    cluster = build_redis(redis_settings(redis_cluster, timeout=2.0))
    assert isinstance(cluster, RespCluster)
    try:
        key = f"tessera:{{{new_slug()}}}:moved"
        assert await cluster.incr(key) == 1
        slot = key_slot(key.encode())
        owner = cluster._slots[slot]
        wrong = next(node for node in cluster._nodes.values() if node is not owner)
        cluster._slots[slot] = wrong  # as if the slot had moved to `owner` since the map
        assert await cluster.incr(key) == 2
        for _ in range(100):
            if cluster._slots[slot] is owner:
                break
            await asyncio.sleep(0.01)
        assert cluster._slots[slot] is owner
        assert await cluster.incr(key) == 3
    finally:
        await cluster.aclose()
