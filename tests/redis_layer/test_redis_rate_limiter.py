"""TenantRateLimiter against real Redis: counting, isolation, plan changes, faults."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from app.redis.client import build_redis
from app.services.rate_limiter import (
    RateLimiterUnavailable,
    RateLimitExceeded,
    TenantRateLimiter,
    parse_windows,
    window_key,
)
from app.services.tenant_keys import TenantKeys
from tests.redis_layer.redis_servers import REDIS_URL, RedisProcess, new_tenant, redis_settings


def limiter_for(client: Any, **overrides: Any) -> TenantRateLimiter:
    options: dict[str, Any] = {
        "default_limit": "600/minute",
        "fail_open": True,
        "timeout_seconds": 2.0,
    }
    options.update(overrides)
    return TenantRateLimiter(client, **options)


async def test_tenant_at_5_per_minute_gets_5_then_429_with_retry_after(
    shared_redis: Any, tenant_keys: TenantKeys
) -> None:
    limiter = limiter_for(shared_redis)
    states = [await limiter.check(tenant_keys, "5/minute") for _ in range(5)]
    assert [s.remaining for s in states if s is not None] == [4, 3, 2, 1, 0]
    with pytest.raises(RateLimitExceeded) as caught:
        await limiter.check(tenant_keys, "5/minute")
    error = caught.value
    assert error.status == 429 and error.code == "rate_limited"
    assert 1 <= int(error.headers["Retry-After"]) <= 60
    assert error.headers["X-RateLimit-Limit"] == "5"
    assert error.headers["X-RateLimit-Remaining"] == "0"
    reset = int(error.headers["X-RateLimit-Reset"])
    assert time.time() < reset <= time.time() + 61


async def test_another_tenant_is_unaffected_by_a_limited_one(shared_redis: Any) -> None:
    limiter = limiter_for(shared_redis)
    noisy, quiet = new_tenant(), new_tenant()
    for _ in range(2):
        await limiter.check(noisy, "2/minute")
    with pytest.raises(RateLimitExceeded):
        await limiter.check(noisy, "2/minute")
    state = await limiter.check(quiet, "2/minute")
    assert state is not None and state.remaining == 1


async def test_headers_describe_the_state_of_an_allowed_request(
    shared_redis: Any, tenant_keys: TenantKeys
) -> None:
    state = await limiter_for(shared_redis).check(tenant_keys, "10/hour")
    assert state is not None
    headers = state.headers()
    assert headers["X-RateLimit-Limit"] == "10"
    assert headers["X-RateLimit-Remaining"] == "9"
    assert time.time() + 3500 < int(headers["X-RateLimit-Reset"]) <= time.time() + 3601
    assert "Retry-After" not in headers


async def test_two_instances_sharing_redis_allow_exactly_6_at_6_per_minute(
    shared_redis: Any, tenant_keys: TenantKeys
) -> None:
    first = limiter_for(shared_redis)
    second = limiter_for(build_redis(redis_settings(REDIS_URL, timeout=2.0)))
    allowed = 0
    for attempt in range(12):
        limiter = first if attempt % 2 == 0 else second
        try:
            await limiter.check(tenant_keys, "6/minute")
            allowed += 1
        except RateLimitExceeded:
            pass
    await second.redis.aclose()
    assert allowed == 6


async def test_concurrent_requests_never_exceed_the_limit(
    shared_redis: Any, tenant_keys: TenantKeys
) -> None:
    limiter = limiter_for(shared_redis)

    async def attempt() -> bool:
        try:
            await limiter.check(tenant_keys, "7/minute")
            return True
        except RateLimitExceeded:
            return False

    results = await asyncio.gather(*(attempt() for _ in range(30)))
    assert results.count(True) == 7


async def test_a_limit_change_applies_at_once_and_keeps_what_was_used(
    shared_redis: Any, tenant_keys: TenantKeys
) -> None:
    limiter = limiter_for(shared_redis)
    for _ in range(3):
        await limiter.check(tenant_keys, "3/minute")
    with pytest.raises(RateLimitExceeded):
        await limiter.check(tenant_keys, "3/minute")
    # The plan is raised: two more fit into the running minute, not five.
    for expected_remaining in (1, 0):
        state = await limiter.check(tenant_keys, "5/minute")
        assert state is not None and state.remaining == expected_remaining
    with pytest.raises(RateLimitExceeded):
        await limiter.check(tenant_keys, "5/minute")


async def test_tenant_without_own_limit_gets_the_default(
    shared_redis: Any, tenant_keys: TenantKeys
) -> None:
    limiter = limiter_for(shared_redis, default_limit="2/minute")
    await limiter.check(tenant_keys, None)
    await limiter.check(tenant_keys, "")
    with pytest.raises(RateLimitExceeded):
        await limiter.check(tenant_keys, None)


async def test_several_limits_all_apply_and_a_rejection_counts_against_none(
    shared_redis: Any, inspector: Any, tenant_keys: TenantKeys
) -> None:
    limiter = limiter_for(shared_redis)
    for _ in range(2):
        await limiter.check(tenant_keys, "2/second;100/hour")
    with pytest.raises(RateLimitExceeded) as caught:
        await limiter.check(tenant_keys, "2/second;100/hour")
    assert caught.value.headers["X-RateLimit-Limit"] == "2"
    assert caught.value.headers["Retry-After"] == "1"
    hour_count = await inspector.get(window_key(tenant_keys, parse_windows("100/hour")[0]))
    assert int(hour_count) == 2


async def test_the_binding_limit_is_the_one_with_least_left(
    shared_redis: Any, tenant_keys: TenantKeys
) -> None:
    state = await limiter_for(shared_redis).check(tenant_keys, "1000/second;3/hour")
    assert state is not None and (state.limit, state.remaining) == (3, 2)


def test_limits_on_the_same_window_share_one_counter_with_the_strictest_amount() -> None:
    assert [(w.amount, w.seconds) for w in parse_windows("10/minute;5/60 seconds;1/day")] == [
        (5, 60),
        (1, 86400),
    ]


async def test_keys_carry_the_tenant_hash_tag(
    shared_redis: Any, inspector: Any, tenant_keys: TenantKeys
) -> None:
    await limiter_for(shared_redis).check(tenant_keys, "5/minute")
    keys = [key.decode() async for key in inspector.scan_iter(match=f"{tenant_keys.prefix}*")]
    assert keys == [f"{tenant_keys.prefix}rl:60s"]
    assert 0 < await inspector.pttl(keys[0]) <= 60_000


async def test_rejections_are_reported_to_the_metrics_hook(
    shared_redis: Any, tenant_keys: TenantKeys
) -> None:
    rejected: list[str] = []
    limiter = limiter_for(shared_redis, on_rejection=rejected.append)
    await limiter.check(tenant_keys, "1/minute")
    for _ in range(2):
        with pytest.raises(RateLimitExceeded):
            await limiter.check(tenant_keys, "1/minute")
    assert rejected == [tenant_keys.slug, tenant_keys.slug]  # metrics label by slug


async def test_unreachable_redis_fails_open_quickly_and_logs_once(
    closed_port_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = build_redis(redis_settings(closed_port_url))
    limiter = limiter_for(client, timeout_seconds=0.25)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="tessera.redis"):
        results = [await limiter.check(new_tenant(), "1/minute") for _ in range(3)]
    assert results == [None, None, None]
    assert time.monotonic() - started < 3 * 0.5
    assert limiter.outages.failures == 3
    assert len([r for r in caplog.records if "rate_limiter" in r.getMessage()]) == 1
    await client.aclose()


async def test_unreachable_redis_answers_503_when_fail_open_is_off(closed_port_url: str) -> None:
    client = build_redis(redis_settings(closed_port_url))
    limiter = limiter_for(client, fail_open=False, timeout_seconds=0.25)
    with pytest.raises(RateLimiterUnavailable) as caught:
        await limiter.check(new_tenant(), "1/minute")
    assert caught.value.status == 503
    assert caught.value.code == "rate_limiter_unavailable"
    await client.aclose()


async def test_frozen_redis_costs_at_most_the_timeout_and_recovers_by_itself(
    private_redis: RedisProcess,
) -> None:
    client = build_redis(redis_settings(private_redis.url, timeout=0.25))
    limiter = limiter_for(client, timeout_seconds=0.25)
    tenant_keys = new_tenant()
    assert await limiter.check(tenant_keys, "5/minute") is not None

    private_redis.freeze()
    started = time.monotonic()
    assert await limiter.check(tenant_keys, "5/minute") is None
    assert time.monotonic() - started < 1.0

    private_redis.thaw()
    deadline = time.monotonic() + 5
    state = None
    while state is None and time.monotonic() < deadline:
        state = await limiter.check(tenant_keys, "5/minute")
    assert state is not None and state.remaining <= 3
    await client.aclose()
