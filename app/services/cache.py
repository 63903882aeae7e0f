"""Read-through cache of tenant GET responses in Redis, keyed per tenant and per generation.

Key layout. Every key starts with the tenant's prefix, `tessera:{acme}:<id>:` (id: the
tenant's immutable id in hex; the braces are the Redis Cluster hash tag, so every key of a
tenant is on one slot; app/services/tenant_keys.py builds it):

    tessera:{acme}:<id>:gen                     the generation; a bump drops everything
    tessera:{acme}:<id>:ver:<collection>        a collection's version; a change drops its pages
    tessera:{acme}:<id>:ver:<collection>:<rid>  one resource's version
    tessera:{acme}:<id>:<gen>:<collection>:<rid>@<ver>    one resource
    tessera:{acme}:<id>:<gen>:<collection>@<ver>:<query>  one page of a collection's listing

Invalidating never deletes an entry: it gives the version a new random value, so readers
look elsewhere and the old entry expires with its TTL. An entry is stored only if the
generation and version are still the ones its lookup saw (compare-and-set in one script),
so a read that loaded old data while a write committed can never publish it afterwards.

A tenant created under the slug of a deleted one has another id, so it never reads the old
tenant's entries, whether or not the delete's generation bump reached Redis (decision 0022).
The generation is a counter that never expires. Versions expire 2 x CACHE_TTL_SECONDS after
their last change: an absent version reads as "0" again, which is safe because every entry
stored under "0" was stored before the first change and has expired by then; random values
never recur.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from app.redis import scripts
from app.redis.client import REDIS_UNAVAILABLE_ERRORS, RedisOutageLog, own_timeout, within
from app.services.cache_entries import (
    CachedResponse,
    CacheKey,
    generation_key,
    lookup_inputs,
    version_key,
)
from app.services.rate_limiter import Count
from app.services.tenant_keys import TenantKeys

logger = logging.getLogger("tessera.cache")

CacheResult = Literal["hit", "miss", "error"]


def _noop_result(result: CacheResult) -> None:
    return None


@dataclass(frozen=True, slots=True)
class _Lookup:
    """Where a miss goes, and the generation and version its store must still find."""

    entry_key: str
    generation_key: str
    version_key: str
    generation: bytes
    version: bytes


@dataclass(frozen=True, slots=True)
class Prefetched:
    """A request counted and its cached read looked up in one round trip (admission,
    app/api/admission.py); the rate limiter and get_or_load carry on from it."""

    count: Count
    key: CacheKey | None  # None: counted only (cache off, or a flush owed first)
    counted: list[Any] | None = None  # count_request's reply; None when Redis failed
    lookup: _Lookup | None = None  # None when not looked up: refused, Redis failed, no key
    entry: bytes | None = None  # the cached response, when there is one
    error: BaseException | None = None  # why Redis did not answer

    @property
    def tenant(self) -> TenantKeys:
        return self.count.tenant

    @property
    def allowed(self) -> bool:
        """Counted and not refused."""
        return self.counted is not None and int(self.counted[0]) == 0


class TenantCache:
    """Built once per process (app.state.cache); safe to share between requests."""

    def __init__(
        self,
        redis: Any,
        *,
        ttl_seconds: int,
        timeout_seconds: float,
        on_result: Callable[[CacheResult], None] = _noop_result,
        outage_log_interval_seconds: float = 30.0,
    ) -> None:
        self.redis = redis
        self.ttl_ms = ttl_seconds * 1000
        # A version outlives every entry stored under the value it replaced (module doc).
        self.version_ttl_ms = 2 * self.ttl_ms
        self.timeout_seconds = timeout_seconds
        self.on_result = on_result
        self.outages = RedisOutageLog("cache", interval_seconds=outage_log_interval_seconds)
        self._lookup = redis.register_script(scripts.LOOKUP)
        self._store_if_current = redis.register_script(scripts.STORE_IF_CURRENT)
        self._invalidate = redis.register_script(scripts.INVALIDATE)
        self._counted = redis.register_script(scripts.COUNT_AND_LOOKUP)
        self._own_timeout = own_timeout(redis, timeout_seconds)
        # In-process single flight: concurrent misses on one entry share one load. Across
        # replicas an entry may be computed more than once, which is harmless.
        self._flights: dict[str, asyncio.Future[CachedResponse]] = {}
        # Tenants whose invalidation did not reach Redis: what Redis holds for them may
        # predate a committed write. Their next use of the cache on this replica bumps the
        # generation first, and reads bypass the cache until that bump gets through, so a
        # client reads its own writes back even across a Redis blip or restart.
        # By prefix: a str caches its hash, so the hot path's membership test stays cheap.
        self._unflushed: set[str] = set()

    @property
    def enabled(self) -> bool:
        return self.ttl_ms > 0

    def ready(self, tenant: TenantKeys) -> bool:
        """Whether the tenant's entries can be looked up as they are (no flush owed first)."""
        return self.ttl_ms > 0 and tenant.prefix not in self._unflushed

    async def count_and_lookup(self, count: Count, key: CacheKey | None) -> Prefetched:
        """Count the request (`count`, from the rate limiter) and look `key` up (unless it
        is None: see `ready`), in one round trip. Never raises for Redis trouble: the error
        is kept in the result, for the rate limiter and get_or_load to handle as if they
        had met it themselves."""
        keys: list[str] = list(count.keys)
        args: list[Any] = [len(count.keys), *count.args]
        if key is not None:
            gen_key, ver_key, lookup_args = lookup_inputs(count.tenant, key)
            keys += [gen_key, ver_key]
            args += lookup_args
        try:
            reply = await within(self._own_timeout, self._counted(keys=keys, args=args))
        except REDIS_UNAVAILABLE_ERRORS as exc:
            return Prefetched(count, key, error=exc)
        if len(reply) == 1:  # refused, or not asked to: nothing was looked up
            return Prefetched(count, key, counted=reply[0])
        entry_key, raw, generation, version = reply[1]
        lookup = _Lookup(entry_key.decode(), gen_key, ver_key, generation, version)
        return Prefetched(count, key, counted=reply[0], lookup=lookup, entry=raw)

    async def get_or_load(
        self,
        tenant: TenantKeys,
        key: CacheKey,
        load: Callable[[], Awaitable[CachedResponse]],
        prefetched: Prefetched | None = None,
    ) -> CachedResponse:
        """The cached response, else `load()`'s (stored when it is a 200).

        Redis trouble never fails the request: the cache is bypassed, `load()` answers.
        With CACHE_TTL_SECONDS=0 Redis is not asked at all. `prefetched`, when it is this
        tenant's and this key's, stands in for the lookup (and for its failure).
        """
        if not self.enabled:
            return await load()
        try:
            lookup, raw = await self._looked_up(tenant, key, prefetched)
        except REDIS_UNAVAILABLE_ERRORS as exc:
            self.outages.report(exc)
            self.on_result("error")
            # Still one load per entry in this process: an outage must not also turn
            # into a stampede on PostgreSQL.
            return await self._single_flight(f"bypass|{tenant.prefix}|{key}", load, None)
        self.outages.failing = False  # Redis answered
        if raw is not None:
            self.on_result("hit")
            return CachedResponse.decode(raw)
        self.on_result("miss")
        return await self._single_flight(lookup.entry_key, load, lookup)

    async def invalidate(self, tenant: TenantKeys, *keys: CacheKey) -> None:
        """Drop what a write touched, once it has committed and before its response is sent.

        A resource key drops that one entry; a page key (or `CacheKey.pages`) drops every
        page of the collection. Redis trouble is logged and swallowed, and the tenant's
        generation is bumped when Redis answers again (on this replica's next use of the
        cache for the tenant); until then other replicas may serve the old entries, for at
        most CACHE_TTL_SECONDS. Nothing to do when the cache is off.
        """
        if not self.enabled or not keys:
            return
        redis_keys = sorted({version_key(tenant, k.versioned) for k in keys})
        try:
            if tenant.prefix in self._unflushed:
                async with asyncio.timeout(self.timeout_seconds):
                    await self._flush(tenant)  # wider than these keys: covers them
            else:
                args = [secrets.token_hex(8), self.version_ttl_ms]
                await within(self._own_timeout, self._invalidate(keys=redis_keys, args=args))
            self.outages.failing = False
        except REDIS_UNAVAILABLE_ERRORS as exc:
            self.outages.report(exc)
            self._unflushed.add(tenant.prefix)

    async def bump_generation(self, tenant: TenantKeys) -> int | None:
        """Drop every entry of the tenant at once (a project deleted, a migration, or the
        tenant deleted: there only as cleanup, since no later tenant shares its keys).

        Done even when this process has the cache off: other replicas, or this one after a
        restart, may have it on. Returns the new generation, or None when Redis could not be
        reached.
        """
        try:
            async with asyncio.timeout(self.timeout_seconds):
                return await self._flush(tenant)
        except REDIS_UNAVAILABLE_ERRORS as exc:
            self.outages.report(exc)
            self._unflushed.add(tenant.prefix)
            return None

    async def _flush(self, tenant: TenantKeys) -> int:
        generation = int(await self.redis.incr(generation_key(tenant)))
        self._unflushed.discard(tenant.prefix)
        self.outages.failing = False
        return generation

    async def _looked_up(
        self, tenant: TenantKeys, key: CacheKey, prefetched: Prefetched | None
    ) -> tuple[_Lookup, bytes | None]:
        if (
            prefetched is not None
            and prefetched.tenant.prefix == tenant.prefix
            and prefetched.key == key
            and tenant.prefix not in self._unflushed
        ):
            if prefetched.error is not None:
                raise prefetched.error
            if prefetched.lookup is not None:
                return prefetched.lookup, prefetched.entry
            # counted without a lookup: look up now
        async with asyncio.timeout(self.timeout_seconds):
            if tenant.prefix in self._unflushed:
                await self._flush(tenant)
            return await self._run_lookup(tenant, key)

    async def _run_lookup(self, tenant: TenantKeys, key: CacheKey) -> tuple[_Lookup, bytes | None]:
        gen_key, ver_key, lookup_args = lookup_inputs(tenant, key)
        entry_key, raw, generation, version = await self._lookup(
            keys=[gen_key, ver_key], args=lookup_args
        )
        return _Lookup(entry_key.decode(), gen_key, ver_key, generation, version), raw

    async def _single_flight(
        self,
        flight_key: str,
        load: Callable[[], Awaitable[CachedResponse]],
        lookup: _Lookup | None,
    ) -> CachedResponse:
        while (flight := self._flights.get(flight_key)) is not None:
            try:
                # shield: a waiter that gives up (client gone) must not cancel the load.
                return await asyncio.shield(flight)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if flight.cancelled() and current is not None and not current.cancelling():
                    continue  # the loading request was cancelled, not us: take over
                raise
        flight = asyncio.get_running_loop().create_future()
        self._flights[flight_key] = flight
        try:
            response = await load()
            if lookup is not None and response.status == 200:
                await self._store(lookup, response)
        except asyncio.CancelledError:
            flight.cancel()
            raise
        except Exception as exc:
            flight.set_exception(exc)
            flight.exception()  # retrieved: no "never retrieved" noise when nobody waited
            raise
        else:
            flight.set_result(response)
            return response
        finally:
            del self._flights[flight_key]

    async def _store(self, lookup: _Lookup, response: CachedResponse) -> None:
        try:
            await within(
                self._own_timeout,
                self._store_if_current(
                    keys=[lookup.generation_key, lookup.version_key, lookup.entry_key],
                    args=[lookup.generation, lookup.version, response.encode(), self.ttl_ms],
                ),
            )
        except REDIS_UNAVAILABLE_ERRORS as exc:
            self.outages.report(exc)
