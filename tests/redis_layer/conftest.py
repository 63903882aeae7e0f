"""Fixtures for the Redis layer: real Redis servers only (shared, private, frozen, clustered)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from app.redis.client import build_redis
from app.services.tenant_keys import TenantKeys
from tests.redis_layer.redis_servers import (
    ISSUED_SLUGS,
    REDIS_URL,
    RedisProcess,
    TestCluster,
    free_port,
    new_slug,
    new_tenant,
    redis_settings,
    start_cluster,
    start_redis,
    stop_redis,
)


@pytest.fixture
def slug() -> str:
    return new_slug()


@pytest.fixture
def tenant_keys() -> TenantKeys:
    """An invented tenant as the cache and the rate limiter take it (slug and id)."""
    return new_tenant()


@pytest.fixture(scope="session", autouse=True)
def forget_test_tenants() -> Iterator[None]:
    """Delete the keys of every tenant the tests invented (counters have no TTL)."""
    yield
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        for slug in ISSUED_SLUGS:
            keys = list(client.scan_iter(match=f"tessera:{{{slug}}}:*"))
            if keys:
                client.delete(*keys)
    except redis.RedisError:
        pass  # the shared Redis is gone; nothing to clean
    finally:
        client.close()


@pytest.fixture
async def shared_redis() -> AsyncIterator[Any]:
    """The test Redis (TEST_REDIS_URL); tests use fresh tenant slugs, so nothing collides."""
    # A generous timeout: these tests are about behaviour, not about a loaded CI box.
    client = build_redis(redis_settings(REDIS_URL, timeout=2.0))
    yield client
    await client.aclose()


@pytest.fixture
async def inspector() -> AsyncIterator[aioredis.Redis]:
    """redis-py on the test Redis, to look at what a test left there (the app's client speaks
    only the hot path's commands)."""
    client = aioredis.Redis.from_url(REDIS_URL, socket_timeout=5)
    yield client
    await client.aclose()


@pytest.fixture
def private_redis() -> Iterator[RedisProcess]:
    """A redis-server of our own, which a test may freeze (SIGSTOP) without hurting others."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH")
    with tempfile.TemporaryDirectory() as directory:
        proc = start_redis(Path(directory))
        try:
            yield proc
        finally:
            stop_redis(proc)


@pytest.fixture
def closed_port_url() -> str:
    """A loopback port nobody listens on: connections are refused at once."""
    return f"redis://127.0.0.1:{free_port()}/0"


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[str]:
    """Three master nodes, no replicas, in a temporary directory; yields a startup-node URL."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server and redis-cli are needed on PATH")
    with tempfile.TemporaryDirectory() as directory:
        nodes = start_cluster(Path(directory))
        try:
            yield f"redis+cluster://127.0.0.1:{nodes[0].port}/0"
        finally:
            for node in nodes:
                stop_redis(node)


@pytest.fixture
def start_test_cluster() -> Iterator[Callable[..., TestCluster]]:
    """`start_test_cluster(full_coverage=False, replicas=0)`: a three-master cluster of this
    test's own, which it may take masters of down; stopped at the end of the test."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server and redis-cli are needed on PATH")
    started: list[TestCluster] = []
    with tempfile.TemporaryDirectory() as directory:

        def start(*, full_coverage: bool = False, replicas: int = 0) -> TestCluster:
            cluster_dir = Path(directory) / str(len(started))
            cluster_dir.mkdir()
            started.append(TestCluster(cluster_dir, full_coverage=full_coverage, replicas=replicas))
            return started[-1]

        try:
            yield start
        finally:
            for cluster in started:
                cluster.stop()
