"""The Redis client, built once per process from REDIS_URL: the thin pipelined client
(app/redis/resp.py) for a plain redis:// server, the thin cluster client
(app/redis/cluster.py) for a Cluster reached by one, redis-py for everything else."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from app.core.config import Settings
from app.redis.cluster import RespCluster
from app.redis.resp import RespClient

logger = logging.getLogger("tessera.redis")

T = TypeVar("T")

RedisClient = RespClient | RespCluster | Redis | RedisCluster


def build_redis(settings: Settings) -> RedisClient:
    timeout = settings.redis_timeout_seconds
    url = settings.redis_url
    if url.startswith("redis+cluster://") or settings.redis_cluster:
        url = url.replace("redis+cluster://", "redis://", 1)
        if RespCluster.serves(url):
            # No node is special: losing one master costs only its own slots' tenants
            # (docs/decisions/0020-redis-cluster-without-a-default-node.md).
            return RespCluster.from_url(url, connect_timeout=timeout, reply_timeout=timeout)
        # rediss:// or options in the URL: redis-py, whose cluster client loses every slot
        # while the master of slot 0 is down (decision 0020).
        return RedisCluster.from_url(url, **_redis_py_options(timeout))
    if RespClient.serves(url):
        # The hot path's one or two calls per request cost a third of redis-py's CPU here
        # (docs/decisions/0010-thin-redis-client-on-the-hot-path.md).
        return RespClient.from_url(url, connect_timeout=timeout, reply_timeout=timeout)
    # rediss://, unix:// or options in the query string: redis-py knows them.
    client: Redis = Redis.from_url(url, retry_on_timeout=False, **_redis_py_options(timeout))
    return client


def _redis_py_options(timeout: float) -> dict[str, Any]:
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "health_check_interval": 0,
        "decode_responses": False,
    }


def own_timeout(redis: Any, timeout: float) -> float | None:
    """The timeout a caller must put around each call to `redis`, or None when the client
    already fails every request that waits longer (the thin client, whose reply_timeout is
    no longer than `timeout`): asyncio.timeout costs about 20 µs a call here, a third of
    the call itself."""
    if isinstance(redis, RespClient | RespCluster) and redis.reply_timeout <= timeout:
        return None
    return timeout


async def within(timeout: float | None, call: Awaitable[T]) -> T:
    """Await `call`, bounded by `timeout` unless it is None (see own_timeout)."""
    if timeout is None:
        return await call
    async with asyncio.timeout(timeout):
        return await call


# What a Redis outage looks like from either client (the thin one raises redis-py's
# exceptions): the caller degrades on these and lets everything else (a bug) surface.
REDIS_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    RedisError,
    RedisClusterException,
    OSError,
    TimeoutError,
)


def is_cluster(redis: Any) -> bool:
    """Whether `redis` is a Cluster client (a script's keys must then share one slot)."""
    return isinstance(redis, RespCluster | RedisCluster)


async def redis_serves(redis: Any) -> bool:
    """Whether every node answers and, on a Cluster, says cluster_state:ok (a cluster that
    refuses commands still answers PING)."""
    if isinstance(redis, RespCluster):
        return await redis.cluster_ok()
    if isinstance(redis, RedisCluster):
        info = await redis.cluster_info()
        return bool(await redis.ping()) and info.get("cluster_state") == "ok"
    return bool(await redis.ping())


class RedisOutageLog:
    """Counts Redis failures of one component and logs a warning at most once per interval.

    During an outage every request fails the same way; one line per interval says so without
    flooding the logs, and `failures` keeps the full count. `failing` is whether the
    component's latest Redis call failed (its successes clear it: one attribute store).
    """

    def __init__(self, component: str, *, interval_seconds: float = 30.0) -> None:
        self.component = component
        self.interval_seconds = interval_seconds
        self.failures = 0
        self.failing = False
        self._suppressed = 0
        self._last_logged: float | None = None

    def report(self, exc: BaseException) -> None:
        self.failures += 1
        self.failing = True
        now = time.monotonic()
        if self._last_logged is not None and now - self._last_logged < self.interval_seconds:
            self._suppressed += 1
            return
        logger.warning(
            "redis unavailable for %s: %s (%d similar failures not logged)",
            self.component,
            type(exc).__name__,
            self._suppressed,
            extra={"event_fields": {"component": self.component, "error": type(exc).__name__}},
        )
        self._last_logged = now
        self._suppressed = 0
