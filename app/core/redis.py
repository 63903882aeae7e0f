"""The Redis client, built once per process from REDIS_URL (standalone or Cluster)."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from app.core.config import Settings

RedisClient = Redis | RedisCluster


def build_redis(settings: Settings) -> Any:
    timeout = settings.redis_timeout_seconds
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "health_check_interval": 0,
        "decode_responses": False,
    }
    url = settings.redis_url
    if url.startswith("redis+cluster://") or settings.redis_cluster:
        url = url.replace("redis+cluster://", "redis://", 1)
        return RedisCluster.from_url(url, **options)
    return Redis.from_url(url, retry_on_timeout=False, **options)
