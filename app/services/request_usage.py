"""Requests per tenant by status class, counted in process and kept in Redis.

The request path adds one to a dict (`RequestTally.record`); once a second the tally goes
to Redis, one script call per BATCH tenants that had requests (`RECORD_REQUESTS`), so
serving a request costs no Redis round trip of its own. What a process had not yet flushed
when it stops is flushed by `aclose`; what Redis refused is dropped and logged (the figures
are for the usage page and capacity planning, not billing). Reading one tenant's counts is
one script call (`READ_REQUESTS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from app.redis import scripts
from app.redis.client import (
    REDIS_UNAVAILABLE_ERRORS,
    RedisOutageLog,
    is_cluster,
    own_timeout,
    within,
)
from app.services.tenant_keys import TenantKeys

logger = logging.getLogger("tessera.usage")

STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
MINUTE_BUCKET_SECONDS, HOUR_BUCKET_SECONDS = 300, 3600
HOUR_BUCKETS, DAY_BUCKETS = 12, 24  # the last hour: 12 five-minute buckets; a day: 24 hours
KEEP_SECONDS = 25 * 3600  # a tenant's hash outlives its last request by a day and an hour
FLUSH_INTERVAL_SECONDS = 1.0
# Tenants per script call on a single server. Redis runs a script alone, so a call must be
# short: 200 tenants took about a millisecond, and a flush of 10,000 rotating tenants sent
# 15 of them at once, which held every request's rate-limit and cache call behind them
# (p99 25 ms against 13 at 10 tenants). 50 tenants a call, one call at a time.
BATCH = 50
CONCURRENT = 50  # on a Cluster (one tenant a call, spread over the nodes): calls in flight


def _counts_args(prefix: str, pending: dict[str, list[int]], latest: dict[str, float]) -> list[Any]:
    """One tenant's share of RECORD_REQUESTS's ARGV: its latest request's time, how many
    (status class, count) pairs follow, and the pairs of the classes it had requests in."""
    pairs: list[Any] = []
    for status_class, count in zip(STATUS_CLASSES, pending[prefix], strict=True):
        if count:
            pairs += [status_class, count]
    return [repr(latest[prefix]), len(pairs) // 2, *pairs]


def usage_key(tenant_prefix: str) -> str:
    """Under the tenant's key prefix (TenantKeys.prefix: its slug as the Redis Cluster hash
    tag, and its id, so a later tenant of the slug never inherits these counts)."""
    return f"{tenant_prefix}usage"


@dataclass(frozen=True, slots=True)
class RequestCounts:
    """A tenant's requests by status class in the last hour (its 12 latest five-minute
    buckets, so 55 to 60 minutes) and the last day (24 latest hour buckets), and the time of
    its latest request (None: none in the last 25 hours)."""

    last_hour: dict[str, int]
    last_day: dict[str, int]
    last_request_at: datetime | None


class RequestTally:
    """Per-process tally of tenant requests, flushed to Redis every second once started."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._pending: dict[str, list[int]] = {}  # key prefix → counts by status class
        self._latest: dict[str, float] = {}  # key prefix → its latest request's time
        self._redis: Any = None
        self._timeout: float | None = None
        self._record: Any = None
        self._read: Any = None
        self._forget: Any = None
        self._task: asyncio.Task[None] | None = None
        self.outages = RedisOutageLog("usage")

    def record(self, tenant_prefix: str, status: int) -> None:
        """Count one request of the tenant whose key prefix (TenantKeys.prefix) this is (the
        request middleware, once per request)."""
        counts = self._pending.get(tenant_prefix)
        if counts is None:
            counts = self._pending[tenant_prefix] = [0, 0, 0, 0, 0]
        counts[min(max(status // 100, 1), 5) - 1] += 1
        self._latest[tenant_prefix] = self._clock()

    def start(self, redis: Any, *, timeout: float) -> None:
        """Use `redis`, and flush to it every second in the background (the app's lifespan)."""
        self.bind(redis, timeout=timeout)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="tessera usage tally"
            )

    def bind(self, redis: Any, *, timeout: float) -> None:
        """Use `redis` for flushes and reads (without the background flushing)."""
        self._redis = redis
        # One script call per BATCH tenants; on a Cluster one per tenant (its own slot).
        self._batch, self._concurrent = (1, CONCURRENT) if is_cluster(redis) else (BATCH, 1)
        self._timeout = own_timeout(redis, timeout)
        self._record = redis.register_script(scripts.RECORD_REQUESTS)
        self._read = redis.register_script(scripts.READ_REQUESTS)
        self._forget = redis.register_script(scripts.FORGET_REQUESTS)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._redis is not None:
            await self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_SECONDS)
            await self.flush()

    async def flush(self) -> None:
        """Send what was counted since the last flush (dropped if Redis does not take it)."""
        pending, latest = self._pending, self._latest
        if not pending or self._record is None:
            return
        self._pending, self._latest = {}, {}
        now = self._clock()
        minute, hour = int(now // MINUTE_BUCKET_SECONDS), int(now // HOUR_BUCKET_SECONDS)
        head = [minute, hour, minute - HOUR_BUCKETS + 1, hour - DAY_BUCKETS + 1, KEEP_SECONDS]
        prefixes = list(pending)
        # Thousands of tenants a second (10,000 rotating) must not become one burst of the
        # event loop or of Redis: each round's calls are built just before they are sent,
        # and the requests served meanwhile pass between rounds.
        step = self._batch * self._concurrent
        for start in range(0, len(prefixes), step):
            calls = []
            for first in range(start, min(start + step, len(prefixes)), self._batch):
                batch = prefixes[first : first + self._batch]
                args = [*head, *(arg for p in batch for arg in _counts_args(p, pending, latest))]
                keys = [usage_key(prefix) for prefix in batch]
                calls.append(within(self._timeout, self._record(keys=keys, args=args)))
            for result in await asyncio.gather(*calls, return_exceptions=True):
                if isinstance(result, REDIS_UNAVAILABLE_ERRORS):
                    self.outages.report(result)
                elif isinstance(result, BaseException):
                    raise result

    async def forget(self, tenant: TenantKeys) -> None:
        """Drop a purged tenant's counts (cleanup: a new tenant of its slug has another id,
        so it never reads them; Redis down: they expire within 25 hours)."""
        self._pending.pop(tenant.prefix, None)
        self._latest.pop(tenant.prefix, None)
        if self._forget is None:
            return
        try:
            await within(self._timeout, self._forget(keys=[usage_key(tenant.prefix)]))
        except REDIS_UNAVAILABLE_ERRORS as exc:
            self.outages.report(exc)

    async def counts(self, tenant: TenantKeys) -> RequestCounts | None:
        """The tenant's counts as Redis has them (None: Redis did not answer)."""
        try:
            raw = await within(self._timeout, self._read(keys=[usage_key(tenant.prefix)]))
        except REDIS_UNAVAILABLE_ERRORS as exc:
            self.outages.report(exc)
            return None
        return summed(raw, self._clock())


def summed(raw: list[Any], now: float) -> RequestCounts:
    """RequestCounts from HGETALL's flat [field, value, ...] of a tenant's usage hash."""
    minute, hour = int(now // MINUTE_BUCKET_SECONDS), int(now // HOUR_BUCKET_SECONDS)
    last_hour = dict.fromkeys(STATUS_CLASSES, 0)
    last_day = dict.fromkeys(STATUS_CLASSES, 0)
    latest = None
    for field, value in zip(raw[::2], raw[1::2], strict=True):
        name = field.decode() if isinstance(field, bytes) else str(field)
        if name == "last":
            latest = datetime.fromtimestamp(float(value), UTC)
            continue
        kind, bucket, status_class = name.split(":")
        if kind == "m" and minute - int(bucket) < HOUR_BUCKETS:
            last_hour[status_class] += int(value)
        elif kind == "h" and hour - int(bucket) < DAY_BUCKETS:
            last_day[status_class] += int(value)
    return RequestCounts(last_hour, last_day, latest)
