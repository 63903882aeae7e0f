"""Per-tenant rate limiting in Redis: one Lua round trip per request, never blocking the loop.

The notation, the header names and their meaning are slowapi's (limits notation such as
"600/minute;20/second", `X-RateLimit-Limit/-Remaining/-Reset` with Reset as epoch seconds,
`Retry-After` in seconds); the Redis work is ours because slowapi's Limiter calls its storage
synchronously from inside the event loop and lets a Redis outage raise into every route
(docs/decisions/0003-async-rate-limiting-on-limits-aio.md).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from limits import RateLimitItem, parse_many

from app.core.errors import RateLimited, ServiceUnavailable
from app.redis import scripts
from app.redis.client import REDIS_UNAVAILABLE_ERRORS, RedisOutageLog, own_timeout, within
from app.services.tenant_keys import TenantKeys

logger = logging.getLogger("tessera.rate_limit")

HEADER_LIMIT = "X-RateLimit-Limit"
HEADER_REMAINING = "X-RateLimit-Remaining"
HEADER_RESET = "X-RateLimit-Reset"
HEADER_RETRY_AFTER = "Retry-After"


@dataclass(frozen=True, slots=True)
class Window:
    """One limit of a tenant: at most `amount` requests per `seconds`."""

    amount: int
    seconds: int


@dataclass(frozen=True, slots=True)
class RateLimitState:
    """The outcome of one check, for the binding window (the one closest to rejecting)."""

    allowed: bool
    limit: int
    remaining: int
    reset_after: float  # seconds until the binding window starts afresh
    reset_at: float  # the same moment as a Unix timestamp

    @property
    def retry_after(self) -> int:
        return max(1, math.ceil(self.reset_after))

    def headers(self) -> dict[str, str]:
        headers = {
            HEADER_LIMIT: str(self.limit),
            HEADER_REMAINING: str(self.remaining),
            HEADER_RESET: str(math.ceil(self.reset_at)),
        }
        if not self.allowed:
            headers[HEADER_RETRY_AFTER] = str(self.retry_after)
        return headers


class RateLimitExceeded(RateLimited):
    """429 `rate_limited`, with Retry-After and the X-RateLimit-* headers."""

    def __init__(self, state: RateLimitState) -> None:
        super().__init__(
            f"Rate limit of {state.limit} requests exceeded; retry in {state.retry_after} s.",
            headers=state.headers(),
        )
        self.state = state


class RateLimiterUnavailable(ServiceUnavailable):
    """503 `rate_limiter_unavailable`: Redis is down and RATE_LIMIT_FAIL_OPEN=false."""

    code = "rate_limiter_unavailable"

    def __init__(self) -> None:
        super().__init__(
            "The rate limiter is unavailable; retry shortly.", headers={HEADER_RETRY_AFTER: "1"}
        )


@lru_cache(maxsize=4096)
def parse_windows(limit: str) -> tuple[Window, ...]:
    """Parse limits notation once per distinct string; several limits on one window keep
    the strictest, so one counter per window serves them all."""
    strictest: dict[int, int] = {}
    for item in parse_many(limit):
        assert isinstance(item, RateLimitItem)
        seconds = int(item.get_expiry())
        strictest[seconds] = min(item.amount, strictest.get(seconds, item.amount))
    if not strictest:
        raise ValueError(f"empty rate limit {limit!r}")
    return tuple(Window(amount, seconds) for seconds, amount in sorted(strictest.items()))


def window_key(tenant: TenantKeys, window: Window) -> str:
    # The counter is per window length, not per amount: a plan change from 100/minute to
    # 1000/minute keeps what was already used in the running minute. Under the tenant's
    # prefix (its `{slug}` hash tag and its id): a tenant created under a deleted one's slug
    # starts with fresh windows.
    return f"{tenant.prefix}rl:{window.seconds}s"


@dataclass(frozen=True, slots=True)
class Count:
    """One request to count: the tenant's windows, and the keys and args of count_request."""

    tenant: TenantKeys
    windows: tuple[Window, ...]
    keys: list[str]
    args: list[int]


def _noop_rejection(tenant_slug: str) -> None:
    return None


class TenantRateLimiter:
    """Built once per process (app.state.rate_limiter); safe to share between requests."""

    def __init__(
        self,
        redis: Any,
        *,
        default_limit: str,
        fail_open: bool,
        timeout_seconds: float,
        on_rejection: Callable[[str], None] = _noop_rejection,
        outage_log_interval_seconds: float = 30.0,
    ) -> None:
        parse_windows(default_limit)  # refuse a bad default now, not on the first request
        self.redis = redis
        self.default_limit = default_limit
        self.fail_open = fail_open
        self.timeout_seconds = timeout_seconds
        self.on_rejection = on_rejection
        self.outages = RedisOutageLog("rate_limiter", interval_seconds=outage_log_interval_seconds)
        self._script = redis.register_script(scripts.COUNT_REQUEST)
        self._own_timeout = own_timeout(redis, timeout_seconds)

    def windows_for(self, limit: str | None) -> tuple[Window, ...]:
        if limit:
            try:
                return parse_windows(limit)
            except ValueError:
                # The registry validates rate limits on write; a bad stored value must not
                # take the tenant's API down, so it gets the default and a log line.
                logger.warning("tenant rate limit %r is not valid; using the default", limit)
        return parse_windows(self.default_limit)

    def count_for(self, tenant: TenantKeys, limit: str | None) -> Count:
        """What counting one request of the tenant against `limit` (else the default) takes."""
        windows = self.windows_for(limit)
        return Count(
            tenant=tenant,
            windows=windows,
            keys=[window_key(tenant, window) for window in windows],
            args=[w.amount for w in windows] + [w.seconds * 1000 for w in windows],
        )

    async def check(self, tenant: TenantKeys, limit: str | None) -> RateLimitState | None:
        """Count one request of the tenant against `limit` (else the default).

        Returns the state for the response headers, or None when Redis could not answer
        and the limiter fails open. Raises RateLimitExceeded (429) when over the limit and
        RateLimiterUnavailable (503) when Redis could not answer and fail_open is false.
        """
        count = self.count_for(tenant, limit)
        try:
            raw = await within(self._own_timeout, self._script(keys=count.keys, args=count.args))
        except REDIS_UNAVAILABLE_ERRORS as exc:
            self.unavailable(exc)
            return None
        return self.settle(count, raw)

    def settle(self, count: Count, raw: list[Any]) -> RateLimitState:
        """The outcome of `count_request` (app/redis/scripts.py), wherever the script ran.

        Raises RateLimitExceeded (429) when the request was refused."""
        self.outages.failing = False  # Redis answered
        state = _binding_state(count.windows, raw, now=time.time())
        if not state.allowed:
            self.on_rejection(count.tenant.slug)  # metrics are labelled by slug
            raise RateLimitExceeded(state)
        return state

    def unavailable(self, exc: BaseException) -> None:
        """Redis could not count a request: returns when failing open, else raises
        RateLimiterUnavailable (503)."""
        self.outages.report(exc)
        if not self.fail_open:
            raise RateLimiterUnavailable() from exc


def _binding_state(windows: tuple[Window, ...], raw: list[Any], *, now: float) -> RateLimitState:
    """Pick the window the client must care about: when rejected, the exhausted window that
    frees up last (so Retry-After is truthful); else the one with the least left."""
    allowed = int(raw[0]) == 0
    candidates: list[tuple[Window, int, float]] = []
    for index, window in enumerate(windows):
        count = int(raw[1 + 2 * index])
        reset_after = int(raw[2 + 2 * index]) / 1000
        candidates.append((window, count, reset_after))
    if allowed:
        window, count, reset_after = min(candidates, key=lambda c: (c[0].amount - c[1], -c[2]))
    else:
        exhausted = [c for c in candidates if c[1] + 1 > c[0].amount]
        window, count, reset_after = max(exhausted, key=lambda c: c[2])
    return RateLimitState(
        allowed=allowed,
        limit=window.amount,
        remaining=max(0, window.amount - count),
        reset_after=reset_after,
        reset_at=now + reset_after,
    )
