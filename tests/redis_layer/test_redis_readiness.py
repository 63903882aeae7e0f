"""/readyz and tessera_redis_degraded say which Redis user cannot use Redis."""

from __future__ import annotations

import redis

from app.core.config import Settings
from tests.redis_layer.redis_servers import RedisProcess
from tests.redis_layer.test_redis_cluster_failover import redis_readiness
from tests.support import running_app


async def test_a_limiter_refused_by_redis_is_degraded_while_redis_answers_pings(
    private_redis: RedisProcess, settings: Settings, headers: dict[str, str]
) -> None:
    """Redis answers PING, but the limiter's scripts are refused (an ACL here; a full or
    misconfigured server alike): readiness says degraded, the gauge says it is the limiter
    (the cache is off), and both clear with the limiter's next good call."""
    config = settings.model_copy(update={"redis_url": private_redis.url, "cache_ttl_seconds": 0})
    admin = redis.Redis(port=private_redis.port)
    try:
        async with running_app(config) as (_, client):
            assert (await client.get("/v1/tenant", headers=headers)).status_code == 200
            assert await redis_readiness(client) == ("ok", {"cache": 0.0, "rate_limiter": 0.0})

            admin.execute_command("ACL", "SETUSER", "default", "-evalsha", "-eval")
            response = await client.get("/v1/tenant", headers=headers)
            assert response.status_code == 200  # failing open
            assert "x-ratelimit-limit" not in response.headers
            degraded = ("degraded", {"cache": 0.0, "rate_limiter": 1.0})
            assert await redis_readiness(client) == degraded

            admin.execute_command("ACL", "SETUSER", "default", "+@all")
            response = await client.get("/v1/tenant", headers=headers)
            assert response.headers["x-ratelimit-limit"] == "600"
            assert await redis_readiness(client) == ("ok", {"cache": 0.0, "rate_limiter": 0.0})
    finally:
        admin.close()
