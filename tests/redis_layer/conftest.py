"""Fixtures for the Redis layer: real Redis servers only (shared, private, frozen, clustered)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from app.redis.client import build_redis
from tests.redis_layer.redis_servers import (
    ISSUED_SLUGS,
    REDIS_URL,
    RedisProcess,
    free_cluster_port,
    free_port,
    new_slug,
    redis_settings,
    start_redis,
    stop_redis,
)


@pytest.fixture
def slug() -> str:
    return new_slug()


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
        nodes: list[RedisProcess] = []
        try:
            for index in range(3):
                node_dir = Path(directory) / str(index)
                node_dir.mkdir()
                nodes.append(
                    start_redis(
                        node_dir,
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(node_dir / "nodes.conf"),
                        "--cluster-node-timeout",
                        "2000",
                        port=free_cluster_port(),
                    )
                )
            subprocess.run(
                [
                    "redis-cli",
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{node.port}" for node in nodes),
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=30,
            )
            deadline = time.monotonic() + 20
            while True:
                info = [
                    redis.Redis(port=node.port, socket_timeout=1).cluster("info") for node in nodes
                ]
                if all(part.get("cluster_state") == "ok" for part in info):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cluster did not become ok: {info}")
                time.sleep(0.1)
            yield f"redis+cluster://127.0.0.1:{nodes[0].port}/0"
        finally:
            for node in nodes:
                stop_redis(node)
