"""Losing one master of a Redis Cluster costs only the tenants whose slots it holds.

A real three-master cluster (no replicas, cluster-require-full-coverage no), the app on it
through the first node's address; each master in turn is killed and started again.
Run with `-s` to see what each group of tenants saw.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import redis
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.db.repositories.tenants import TenantRecord
from app.services.provisioning import create_tenant
from tests.factories import post_project
from tests.metrics_support import CacheMeter, parse_samples
from tests.redis_layer.redis_servers import ISSUED_SLUGS, TestCluster
from tests.support import eventually, running_app

Headers = dict[str, str]

# Requests each tenant makes while its group's figures are taken.
PROBES = 10
# Within this, tenants on the live masters must be back to cache hits and rate-limit
# headers after a master dies, and every tenant after it returns.
RECOVERY_SECONDS = 3.0


@dataclass
class Caller:
    tenant: TenantRecord
    headers: Headers
    url: str  # a project of the tenant: a cached read
    name: str  # the project's name as last written


@dataclass
class Seen:
    """What one group of tenants saw over some requests."""

    requests: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    hits: int = 0
    limit_headers: int = 0
    cache_errors: int = 0

    def add(self, status: int, hit: bool, limited: bool, error: bool) -> None:
        self.requests += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.hits += hit
        self.limit_headers += limited
        self.cache_errors += error

    def __str__(self) -> str:
        return (
            f"{self.requests} requests, statuses {self.statuses}, {self.hits} cache hits, "
            f"{self.limit_headers} with X-RateLimit-*, {self.cache_errors} cache errors"
        )


async def probe(client: httpx.AsyncClient, caller: Caller, seen: Seen | None = None) -> bool:
    """One read of the caller's project; whether it was a cache hit with rate-limit headers."""
    meter = CacheMeter()
    response = await client.get(caller.url, headers=caller.headers)
    delta = meter.delta()
    assert response.status_code == 200, response.text
    assert response.json()["name"] == caller.name  # never stale, from Redis or PostgreSQL
    hit, limited = delta["hit"] == 1, "x-ratelimit-limit" in response.headers
    if seen is not None:
        seen.add(response.status_code, hit, limited, delta["error"] == 1)
    return hit and limited


async def seconds_until_served_by_redis(client: httpx.AsyncClient, callers: list[Caller]) -> float:
    """How long until every caller's reads are cache hits with rate-limit headers again."""
    started = time.monotonic()
    pending = list(callers)
    while pending:
        pending = [caller for caller in pending if not await probe(client, caller)]
        elapsed = time.monotonic() - started
        assert elapsed < RECOVERY_SECONDS, f"{len(pending)} tenants not back after {elapsed:.2f} s"
    return time.monotonic() - started


async def tenants_on_every_master(
    engine: AsyncEngine, settings: Settings, cluster: TestCluster
) -> list[TenantRecord]:
    """One tenant per master: slugs are drawn until each master holds one."""
    slugs: dict[int, str] = {}
    while len(slugs) < len(cluster.masters):
        slug = f"fo-{uuid.uuid4().hex[:10]}"
        slugs.setdefault(cluster.master_of(slug), slug)
    ISSUED_SLUGS.extend(slugs.values())
    return [
        await create_tenant(
            engine, settings, slug=slugs[index], name="F", plan="pro", rate_limit=None
        )
        for index in sorted(slugs)
    ]


async def callers_of(
    client: httpx.AsyncClient,
    tenants: list[TenantRecord],
    auth: Callable[[TenantRecord], Headers],
) -> list[Caller]:
    """Each tenant with a project of its own, to read back through the cache."""
    callers = []
    for tenant in tenants:
        headers = auth(tenant)
        project = await post_project(client, headers, name="v0")
        callers.append(Caller(tenant, headers, f"/v1/projects/{project['id']}", "v0"))
    return callers


async def redis_readiness(client: httpx.AsyncClient) -> tuple[str, dict[str, float]]:
    """/readyz's word on Redis, and tessera_redis_degraded by component."""
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    text = (await client.get("/metrics")).text
    gauge = {
        sample.labels["component"]: sample.value
        for sample in parse_samples(text)
        if sample.name == "tessera_redis_degraded"
    }
    return str(ready.json()["checks"]["redis"]), gauge


DEGRADED = ("degraded", {"cache": 1.0, "rate_limiter": 1.0})
OK = ("ok", {"cache": 0.0, "rate_limiter": 0.0})


async def test_losing_one_master_costs_only_its_own_tenants_cache_and_limits(
    start_test_cluster: Callable[..., TestCluster],
    engine: AsyncEngine,
    settings: Settings,
    auth: Callable[[TenantRecord], Headers],
) -> None:
    test_cluster = start_test_cluster()
    on_cluster = settings.model_copy(update={"redis_url": test_cluster.url})
    tenants = await tenants_on_every_master(engine, settings, test_cluster)
    async with running_app(on_cluster) as (_, client):
        callers = await callers_of(client, tenants, auth)
        await seconds_until_served_by_redis(client, callers)  # warm: every entry cached
        assert await redis_readiness(client) == OK

        for dead in range(len(test_cluster.nodes)):
            test_cluster.kill(dead)
            lost = [c for c in callers if test_cluster.master_of(c.tenant.slug) == dead]
            kept = [c for c in callers if c not in lost]
            assert lost and kept

            # Every tenant keeps calling, the dead master's first: each of their requests
            # meets the dead master, and the live masters' tenants must not pay for it.
            for caller in lost:
                caller.name = f"after-master-{dead}-died"
                response = await client.patch(
                    caller.url, json={"name": caller.name}, headers=caller.headers
                )
                assert response.status_code == 200, response.text
            live, on_dead = Seen(), Seen()
            for caller in lost:
                await probe(client, caller, on_dead)
            live_back = await seconds_until_served_by_redis(client, kept)
            for _ in range(PROBES):
                for caller in lost:
                    await probe(client, caller, on_dead)
                for caller in kept:
                    await probe(client, caller, live)
            # Live masters' tenants: cache hits and rate-limit headers, every one.
            assert live.hits == live.limit_headers == live.requests == PROBES * len(kept)
            # The dead master's: served from PostgreSQL (fail-open), no 500, their writes
            # read back.
            assert on_dead.statuses == {200: (PROBES + 1) * len(lost)}
            assert on_dead.hits == on_dead.limit_headers == 0
            assert on_dead.cache_errors == on_dead.requests
            assert await redis_readiness(client) == DEGRADED

            # The master returns: its tenants are back on Redis, with what they wrote.
            test_cluster.restart(dead)
            dead_back = await seconds_until_served_by_redis(client, lost)
            await seconds_until_served_by_redis(client, callers)
            await eventually(lambda: redis_readiness(client), OK, within=RECOVERY_SECONDS)
            print(
                f"\nmaster {dead} killed ({len(lost)} of {len(callers)} tenants on it):"
                f"\n  live masters' tenants: back on Redis after {live_back * 1000:.0f} ms; {live}"
                f"\n  dead master's tenants: {on_dead}"
                f"\n  master back: its tenants on Redis again after {dead_back * 1000:.0f} ms"
            )


async def test_a_cluster_that_refuses_commands_is_degraded_and_served_from_postgresql(
    start_test_cluster: Callable[..., TestCluster],
    engine: AsyncEngine,
    settings: Settings,
    auth: Callable[[TenantRecord], Headers],
) -> None:
    """With cluster-require-full-coverage yes (Redis's default) a lost master puts the whole
    cluster in cluster_state:fail: every node still answers PING, every command is refused."""
    test_cluster = start_test_cluster(full_coverage=True)
    on_cluster = settings.model_copy(update={"redis_url": test_cluster.url})
    tenants = await tenants_on_every_master(engine, settings, test_cluster)
    async with running_app(on_cluster) as (_, client):
        callers = await callers_of(client, tenants, auth)
        await seconds_until_served_by_redis(client, callers)
        assert await redis_readiness(client) == OK

        # Every node answering, one of them not covering a slot: it says cluster_state:fail.
        owner = redis.Redis(port=test_cluster.nodes[test_cluster.slot_owner(0)].port)
        try:
            owner.execute_command("CLUSTER", "DELSLOTS", 0)
            assert await redis_readiness(client) == DEGRADED
            owner.execute_command("CLUSTER", "ADDSLOTS", 0)
            test_cluster.wait_for_state("ok")
            assert await redis_readiness(client) == OK
        finally:
            owner.close()

        test_cluster.kill(2)
        test_cluster.wait_for_state("fail")
        assert await redis_readiness(client) == DEGRADED
        seen = Seen()
        for caller in callers:
            await probe(client, caller, seen)
        assert seen.statuses == {200: len(callers)}
        assert seen.hits == seen.limit_headers == 0

        test_cluster.restart(2)
        await seconds_until_served_by_redis(client, callers)
        await eventually(lambda: redis_readiness(client), OK, within=RECOVERY_SECONDS)


async def test_a_replica_promoted_in_place_of_a_lost_master_takes_its_tenants_back(
    start_test_cluster: Callable[..., TestCluster],
    engine: AsyncEngine,
    settings: Settings,
    auth: Callable[[TenantRecord], Headers],
) -> None:
    """With a replica per master (what the README recommends), a lost master's tenants are
    back on Redis once Redis has promoted its replica: the client finds the new master."""
    test_cluster = start_test_cluster(replicas=1)
    on_cluster = settings.model_copy(update={"redis_url": test_cluster.url})
    tenants = await tenants_on_every_master(engine, settings, test_cluster)
    async with running_app(on_cluster) as (_, client):
        callers = await callers_of(client, tenants, auth)
        await seconds_until_served_by_redis(client, callers)

        lost = callers[0]
        dead = test_cluster.master_of(lost.tenant.slug)
        slot = test_cluster._owner.index(dead)
        live_node = next(
            test_cluster.nodes[index] for index in test_cluster.masters if index != dead
        )
        killed = time.monotonic()
        test_cluster.kill(dead)
        seen = Seen()
        while test_cluster.slot_owners(live_node)[slot] == dead:  # until the promotion
            await probe(client, lost, seen)
            assert time.monotonic() - killed < 15, "no replica was promoted"
            await asyncio.sleep(0.05)
        promoted = time.monotonic() - killed
        back = await seconds_until_served_by_redis(client, callers)
        assert seen.statuses == {200: seen.requests}
        print(
            f"\nmaster {dead} killed, replica promoted after {promoted:.2f} s; its tenant "
            f"meanwhile: {seen}; back on Redis {back * 1000:.0f} ms after the promotion"
        )
