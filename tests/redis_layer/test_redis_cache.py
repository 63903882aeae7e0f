"""TenantCache against real Redis: hits, isolation, invalidation, single flight, faults."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from app.redis.client import build_redis
from app.services.cache import CacheResult, TenantCache
from app.services.cache_entries import CachedResponse, CacheKey
from app.services.tenant_keys import TenantKeys
from tests.redis_layer.redis_servers import (
    RedisProcess,
    new_tenant,
    redis_settings,
    start_redis,
    stop_redis,
)


class Results:
    """Collects what the cache reports to the metrics hook."""

    def __init__(self) -> None:
        self.counts: Counter[CacheResult] = Counter()

    def __call__(self, result: CacheResult) -> None:
        self.counts[result] += 1


class Loader:
    """A loader that counts its calls and answers a body naming the call."""

    def __init__(self, label: str = "v", *, delay: float = 0.0, status: int = 200) -> None:
        self.label = label
        self.calls = 0
        self.delay = delay
        self.status = status

    async def __call__(self) -> CachedResponse:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        body = f'{{"{self.label}":{self.calls}}}'.encode()
        return CachedResponse(body=body, status=self.status, etag=f'"{self.label}{self.calls}"')


def cache_for(client: Any, results: Results | None = None, **overrides: Any) -> TenantCache:
    options: dict[str, Any] = {"ttl_seconds": 60, "timeout_seconds": 2.0}
    options.update(overrides)
    if results is not None:
        options["on_result"] = results
    return TenantCache(client, **options)


PROJECT = CacheKey.resource("projects", "0b9c6d3e-1111-4222-8333-444455556666")
PROJECT_PAGE = CacheKey.page("projects", "limit=20")


async def test_second_read_is_a_hit_with_the_same_response(
    shared_redis: Any, tenant_keys: TenantKeys
) -> None:
    results = Results()
    cache = cache_for(shared_redis, results)
    load = Loader()
    first = await cache.get_or_load(tenant_keys, PROJECT, load)
    second = await cache.get_or_load(tenant_keys, PROJECT, load)
    assert second == first == CachedResponse(body=b'{"v":1}', etag='"v1"')
    assert load.calls == 1
    assert results.counts == {"miss": 1, "hit": 1}


async def test_entries_live_under_the_tenant_hash_tag_with_the_ttl(
    shared_redis: Any, inspector: Any, tenant_keys: TenantKeys
) -> None:
    await cache_for(shared_redis, ttl_seconds=30).get_or_load(tenant_keys, PROJECT, Loader())
    await cache_for(shared_redis).get_or_load(tenant_keys, PROJECT_PAGE, Loader())
    keys = sorted([k.decode() async for k in inspector.scan_iter(match=f"{tenant_keys.prefix}*")])
    assert keys == [
        f"{tenant_keys.prefix}0:projects:{PROJECT.resource_id}@0",
        f"{tenant_keys.prefix}0:projects@0:limit=20",
    ]
    assert 0 < await inspector.pttl(keys[0]) <= 30_000


async def test_an_invalidation_sets_versions_that_expire_after_twice_the_ttl(
    shared_redis: Any, inspector: Any, tenant_keys: TenantKeys
) -> None:
    cache = cache_for(shared_redis, ttl_seconds=30)
    await cache.invalidate(tenant_keys, PROJECT, CacheKey.pages("projects"))
    versions = [
        f"{tenant_keys.prefix}ver:projects",
        f"{tenant_keys.prefix}ver:projects:{PROJECT.resource_id}",
    ]
    for key in versions:
        assert 30_000 < await inspector.pttl(key) <= 60_000
    before = [await inspector.get(key) for key in versions]
    await cache.invalidate(tenant_keys, PROJECT, CacheKey.pages("projects"))
    after = [await inspector.get(key) for key in versions]
    assert all(b != a for b, a in zip(before, after, strict=True))


async def test_tenant_b_never_gets_tenant_a_entry_for_the_same_key(shared_redis: Any) -> None:
    cache = cache_for(shared_redis)
    tenant_a, tenant_b = new_tenant(), new_tenant()
    a = await cache.get_or_load(tenant_a, PROJECT, Loader("a"))
    b = await cache.get_or_load(tenant_b, PROJECT, Loader("b"))
    assert a.body == b'{"a":1}' and b.body == b'{"b":1}'
    assert (await cache.get_or_load(tenant_b, PROJECT, Loader("x"))).body == b'{"b":1}'


async def test_a_new_tenant_under_an_old_slug_never_gets_the_old_tenants_entries(
    shared_redis: Any, tenant_keys: TenantKeys
) -> None:
    """Keys carry the tenant's id: nothing (no generation bump) needs to reach Redis when a
    slug changes hands for the new tenant to start with an empty cache."""
    cache = cache_for(shared_redis)
    for key in (PROJECT, PROJECT_PAGE):
        assert (await cache.get_or_load(tenant_keys, key, Loader("old"))).body == b'{"old":1}'
    successor = TenantKeys(tenant_keys.slug, uuid.uuid4())
    for key in (PROJECT, PROJECT_PAGE):
        assert (await cache.get_or_load(successor, key, Loader("new"))).body == b'{"new":1}'
    assert successor.prefix.startswith(f"tessera:{{{tenant_keys.slug}}}:")  # same slot


async def test_only_200_responses_are_stored(shared_redis: Any, tenant_keys: TenantKeys) -> None:
    cache = cache_for(shared_redis)
    load = Loader(status=404)
    await cache.get_or_load(tenant_keys, PROJECT, load)
    await cache.get_or_load(tenant_keys, PROJECT, load)
    assert load.calls == 2


async def test_invalidating_a_resource_reaches_another_instance(
    shared_redis: Any, tenant_keys: TenantKeys
) -> None:
    replica_1, replica_2 = cache_for(shared_redis), cache_for(shared_redis)
    load = Loader()
    other = CacheKey.resource("projects", "other")
    await replica_1.get_or_load(tenant_keys, PROJECT, load)
    await replica_1.get_or_load(tenant_keys, other, load)
    await replica_2.invalidate(tenant_keys, PROJECT)
    assert (await replica_1.get_or_load(tenant_keys, PROJECT, load)).body == b'{"v":3}'
    assert (await replica_1.get_or_load(tenant_keys, other, load)).body == b'{"v":2}'


async def test_invalidating_a_collection_drops_every_page_and_only_those(
    shared_redis: Any, tenant_keys: TenantKeys
) -> None:
    replica_1, replica_2 = cache_for(shared_redis), cache_for(shared_redis)
    load = Loader()
    page_2 = CacheKey.page("projects", "limit=20&cursor=abc")
    tasks_page = CacheKey.page("projects/p1/tasks", "limit=20")
    for key in (PROJECT_PAGE, page_2, tasks_page, PROJECT):
        await replica_1.get_or_load(tenant_keys, key, load)
    assert load.calls == 4
    await replica_2.invalidate(tenant_keys, CacheKey.pages("projects"))
    for key in (PROJECT_PAGE, page_2, tasks_page, PROJECT):
        await replica_1.get_or_load(tenant_keys, key, load)
    assert load.calls == 6  # both project pages reloaded; the task page and resource kept


async def test_generation_bump_drops_all_entries_of_the_tenant_only(shared_redis: Any) -> None:
    replica_1, replica_2 = cache_for(shared_redis), cache_for(shared_redis)
    tenant, neighbour = new_tenant(), new_tenant()
    load, neighbour_load = Loader(), Loader()
    for key in (PROJECT, PROJECT_PAGE):
        await replica_1.get_or_load(tenant, key, load)
    await replica_1.get_or_load(neighbour, PROJECT, neighbour_load)
    assert await replica_2.bump_generation(tenant) == 1
    for key in (PROJECT, PROJECT_PAGE):
        await replica_1.get_or_load(tenant, key, load)
    await replica_1.get_or_load(neighbour, PROJECT, neighbour_load)
    assert (load.calls, neighbour_load.calls) == (4, 1)


async def test_a_load_that_races_an_invalidation_is_never_served_afterwards(
    shared_redis: Any, tenant_keys: TenantKeys
) -> None:
    cache = cache_for(shared_redis)

    async def slow_stale_load() -> CachedResponse:
        # The write and its invalidation happen while this read is loading old data.
        await cache.invalidate(tenant_keys, PROJECT)
        await cache.bump_generation(tenant_keys)
        return CachedResponse(body=b"stale")

    assert (await cache.get_or_load(tenant_keys, PROJECT, slow_stale_load)).body == b"stale"
    assert (await cache.get_or_load(tenant_keys, PROJECT, Loader())).body == b'{"v":1}'


@pytest.mark.parametrize(
    "written",
    [PROJECT, PROJECT_PAGE],
    ids=["resource", "page"],
)
async def test_a_load_that_races_only_its_own_invalidation_is_never_served_afterwards(
    shared_redis: Any, tenant_keys: TenantKeys, written: CacheKey
) -> None:
    # No generation bump here: invalidating the one entry must be enough on its own.
    reader, writer = cache_for(shared_redis), cache_for(shared_redis)

    async def stale_load() -> CachedResponse:
        await writer.invalidate(tenant_keys, written)  # the write commits while this read loads
        return CachedResponse(body=b"stale")

    assert (await reader.get_or_load(tenant_keys, written, stale_load)).body == b"stale"
    assert (await reader.get_or_load(tenant_keys, written, Loader())).body == b'{"v":1}'


async def test_zero_ttl_turns_the_cache_off_without_asking_redis(
    shared_redis: Any, inspector: Any, tenant_keys: TenantKeys
) -> None:
    results = Results()
    cache = cache_for(shared_redis, results, ttl_seconds=0)
    load = Loader()
    await cache.get_or_load(tenant_keys, PROJECT, load)
    await cache.get_or_load(tenant_keys, PROJECT, load)
    await cache.invalidate(tenant_keys, PROJECT, CacheKey.pages("projects"))
    assert load.calls == 2
    assert results.counts == {}
    assert [k async for k in inspector.scan_iter(match=f"{tenant_keys.prefix}*")] == []


async def test_twenty_concurrent_misses_run_the_loader_once(
    shared_redis: Any, tenant_keys: TenantKeys
) -> None:
    results = Results()
    cache = cache_for(shared_redis, results)
    load = Loader(delay=0.2)
    responses = await asyncio.gather(
        *(cache.get_or_load(tenant_keys, PROJECT, load) for _ in range(20))
    )
    assert load.calls == 1
    assert {r.body for r in responses} == {b'{"v":1}'}
    assert results.counts == {"miss": 20}


async def test_a_failing_load_fails_every_waiter_and_is_retried_next_time(
    shared_redis: Any, tenant_keys: TenantKeys
) -> None:
    cache = cache_for(shared_redis)
    calls = 0

    async def failing() -> CachedResponse:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        raise LookupError("database said no")

    outcomes = await asyncio.gather(
        *(cache.get_or_load(tenant_keys, PROJECT, failing) for _ in range(5)),
        return_exceptions=True,
    )
    assert calls == 1
    assert all(isinstance(o, LookupError) for o in outcomes)
    assert (await cache.get_or_load(tenant_keys, PROJECT, Loader())).body == b'{"v":1}'


async def test_a_cancelled_loader_hands_over_to_a_waiter(
    shared_redis: Any, tenant_keys: TenantKeys
) -> None:
    cache = cache_for(shared_redis)
    load = Loader(delay=0.3)
    leader = asyncio.create_task(cache.get_or_load(tenant_keys, PROJECT, load))
    await asyncio.sleep(0.05)
    follower = asyncio.create_task(cache.get_or_load(tenant_keys, PROJECT, load))
    await asyncio.sleep(0.05)
    leader.cancel()
    response = await asyncio.wait_for(follower, 2)
    assert response.body == b'{"v":2}' and load.calls == 2
    with pytest.raises(asyncio.CancelledError):
        await leader


async def test_unreachable_redis_is_bypassed_and_counted_as_error(closed_port_url: str) -> None:
    results = Results()
    client = build_redis(redis_settings(closed_port_url))
    cache = cache_for(client, results, timeout_seconds=0.25)
    load = Loader()
    started = time.monotonic()
    tenant_keys = new_tenant()
    first = await cache.get_or_load(tenant_keys, PROJECT, load)
    second = await cache.get_or_load(tenant_keys, PROJECT, load)
    await cache.invalidate(tenant_keys, PROJECT, CacheKey.pages("projects"))
    assert await cache.bump_generation(tenant_keys) is None
    assert time.monotonic() - started < 4 * 0.5
    assert (first.body, second.body, load.calls) == (b'{"v":1}', b'{"v":2}', 2)
    assert results.counts == {"error": 2}
    assert cache.outages.failures == 4
    await client.aclose()


async def test_frozen_redis_is_bypassed_within_a_second_and_recovers_by_itself(
    private_redis: RedisProcess,
) -> None:
    results = Results()
    client = build_redis(redis_settings(private_redis.url, timeout=0.25))
    cache = cache_for(client, results, timeout_seconds=0.25)
    tenant_keys = new_tenant()
    load = Loader()
    await cache.get_or_load(tenant_keys, PROJECT, load)

    private_redis.freeze()
    started = time.monotonic()
    assert (await cache.get_or_load(tenant_keys, PROJECT, load)).body == b'{"v":2}'
    assert time.monotonic() - started < 1.0
    assert results.counts["error"] == 1

    private_redis.thaw()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        response = await cache.get_or_load(tenant_keys, PROJECT, load)
        if results.counts["hit"]:
            break
    assert response.body == b'{"v":1}'
    await client.aclose()


async def test_an_invalidation_lost_in_an_outage_is_made_good_when_redis_returns(
    tmp_path: Path,
) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH")
    # Persistence on: the entry from before the outage comes back with Redis.
    server = start_redis(tmp_path, "--appendonly", "yes")
    client = build_redis(redis_settings(server.url, timeout=0.25))
    try:
        results = Results()
        cache, tenant_keys, load = (
            cache_for(client, results, timeout_seconds=0.25),
            new_tenant(),
            Loader(),
        )
        await cache.get_or_load(tenant_keys, PROJECT, load)
        stop_redis(server)
        await cache.invalidate(tenant_keys, PROJECT)  # the write committed; Redis never heard of it
        assert (await cache.get_or_load(tenant_keys, PROJECT, load)).body == b'{"v":2}'

        server = start_redis(tmp_path, "--appendonly", "yes", port=server.port)
        with redis.Redis(port=server.port) as direct:
            assert direct.dbsize() > 0  # the old entry is back
        deadline = time.monotonic() + 5
        while results.counts["hit"] == 0 and time.monotonic() < deadline:
            # Bypassing while the client reconnects, then one miss, then hits: never v1.
            assert (await cache.get_or_load(tenant_keys, PROJECT, load)).body != b'{"v":1}'
        assert results.counts["hit"] == 1
        with redis.Redis(port=server.port) as direct:
            assert direct.get(f"{tenant_keys.prefix}gen") == b"1"
    finally:
        stop_redis(server)
        await client.aclose()


def test_cached_response_survives_encoding() -> None:
    response = CachedResponse(
        body=b'{"a":\n1}', status=200, media_type="application/json", etag='"x"'
    )
    assert CachedResponse.decode(response.encode()) == response


@pytest.mark.parametrize(
    "build",
    [
        lambda: CacheKey.resource("projects", "a:b"),
        lambda: CacheKey.resource("pro}jects", "a"),
        lambda: CacheKey.page("", "x"),
        lambda: CacheKey("projects"),
    ],
)
def test_ambiguous_cache_names_are_refused(build: Any) -> None:
    with pytest.raises(ValueError):
        build()
