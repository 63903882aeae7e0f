"""Whether the cache and the rate limiter can use Redis: /readyz and tessera_redis_degraded."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from app import metrics
from app.redis.client import redis_serves
from app.services.cache import TenantCache
from app.services.rate_limiter import TenantRateLimiter

logger = logging.getLogger("tessera.health")


async def redis_degraded(
    redis: Any, cache: TenantCache, limiter: TenantRateLimiter, *, timeout: float
) -> dict[metrics.RedisComponent, bool]:
    """Whether each Redis user is degraded: Redis does not serve (every node asked, a
    Cluster's state included), or the component's latest Redis call failed (timeouts under
    load, a refused script). Sets tessera_redis_degraded."""
    try:
        async with asyncio.timeout(timeout):
            serves = await redis_serves(redis)
        if not serves:
            logger.warning("readiness: redis check failed: cluster state not ok")
    except Exception as exc:
        logger.warning("readiness: redis check failed: %s", type(exc).__name__)
        serves = False
    degraded: dict[metrics.RedisComponent, bool] = {
        "cache": not serves or cache.outages.failing,
        "rate_limiter": not serves or limiter.outages.failing,
    }
    metrics.set_redis_degraded(degraded)
    return degraded
