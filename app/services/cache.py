"""Read-through cache of tenant GET responses in Redis, keyed per tenant and per generation.

Key layout (the braces are the Redis Cluster hash tag: every key of a tenant on one slot):

    tessera:{acme}:gen                          the tenant's generation; a bump drops everything
    tessera:{acme}:ver:<collection>             a collection's version; a change drops its pages
    tessera:{acme}:ver:<collection>:<id>        one resource's version
    tessera:{acme}:<gen>:<collection>:<id>@<ver>         one resource
    tessera:{acme}:<gen>:<collection>@<ver>:<query>      one page of a collection's listing

Invalidating never deletes an entry: it gives the version a new random value, so readers
look elsewhere and the old entry expires with its TTL. An entry is stored only if the
generation and version are still the ones its lookup saw (compare-and-set in one script),
so a read that loaded old data while a write committed can never publish it afterwards.

The generation is a counter that never expires (it also separates a deleted tenant from a
new one with the same slug). Versions expire 2 x CACHE_TTL_SECONDS after their last change:
an absent version reads as "0" again, which is safe because every entry stored under "0"
was stored before the first change and has expired by then; random values never recur.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from app.core.redis import REDIS_UNAVAILABLE_ERRORS, RedisOutageLog, own_timeout, within
from app.services.rate_limiter import COUNT_REQUEST_LUA, Count

logger = logging.getLogger("tessera.cache")

CacheResult = Literal["hit", "miss", "error"]

_NAME = re.compile(r"^[A-Za-z0-9_./-]{1,200}$")

# One round trip for a lookup: read the generation and the version (the collection's for a
# page, the resource's otherwise), build the entry key, read the entry. The key and what was
# seen come back so that a miss is stored only under those (see _STORE_LUA). Entry keys are
# built inside the script, which Redis Cluster accepts because they share the tenant's hash
# tag (slot). A Lua function, so that one script can also count the request (_COUNTED_LUA).
_LOOKUP_FUNCTION_LUA = """
local function lookup(generation_key, version_key, prefix, what, tail)
  local generation = redis.call('GET', generation_key) or '0'
  local version = redis.call('GET', version_key) or '0'
  local key = prefix .. generation .. ':' .. what .. '@' .. version .. tail
  return {key, redis.call('GET', key), generation, version}
end
"""
# KEYS: generation, version. ARGV: prefix, "<collection>" or "<collection>:<id>", tail.
_LOOKUP_LUA = _LOOKUP_FUNCTION_LUA + "return lookup(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])\n"

# A cached read's only round trip when its entry is there: count the request against the
# tenant's rate limit, and look the entry up unless the request was refused. The rate-limit
# keys carry the same hash tag, so this works on Redis Cluster too.
# KEYS: the n window counters, then generation and version (absent: count only).
# ARGV: n, the n amounts, the n window lengths in ms, then the lookup's three arguments.
_COUNTED_LUA = (
    COUNT_REQUEST_LUA
    + _LOOKUP_FUNCTION_LUA
    + """
local n = tonumber(ARGV[1])
local keys, args = {}, {}
for i = 1, n do keys[i] = KEYS[i] end
for i = 1, 2 * n do args[i] = ARGV[1 + i] end
local counted = count_request(keys, args)
if counted[1] == 1 or #KEYS == n then return {counted} end
local a = 2 * n + 1
return {counted, lookup(KEYS[n + 1], KEYS[n + 2], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3])}
"""
)

# Store a loaded response only if nothing was invalidated since its lookup.
# KEYS: generation, version, entry. ARGV: generation seen, version seen, value, TTL in ms.
_STORE_LUA = """
if (redis.call('GET', KEYS[1]) or '0') ~= ARGV[1] then return 0 end
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
return 1
"""

# One round trip for a write: a fresh version for every resource and collection it touched.
# KEYS: version keys. ARGV: the new version, its TTL in ms.
_INVALIDATE_LUA = """
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2])
end
return #KEYS
"""


@dataclass(frozen=True, slots=True)
class CacheKey:
    """What is cached: one resource of a collection, or one page of its listing.

    Collections may nest: `projects/<project_id>/tasks` names the tasks of one project.
    """

    collection: str
    resource_id: str | None = None
    query: str | None = None

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.collection):
            raise ValueError(f"collection {self.collection!r} is not a cache name")
        if self.resource_id is not None and not _NAME.fullmatch(self.resource_id):
            raise ValueError(f"resource id {self.resource_id!r} is not a cache name")
        if (self.resource_id is None) == (self.query is None):
            raise ValueError("a cache key names either one resource or one page")

    @classmethod
    def resource(cls, collection: str, resource_id: str) -> CacheKey:
        return cls(collection, resource_id=resource_id)

    @classmethod
    def page(cls, collection: str, query: str = "") -> CacheKey:
        """One page of a listing; `query` is the canonical form of its parameters."""
        return cls(collection, query=query)

    @classmethod
    def pages(cls, collection: str) -> CacheKey:
        """Every page of a collection's listing (for invalidate)."""
        return cls(collection, query="")

    @property
    def is_page(self) -> bool:
        return self.query is not None

    @property
    def versioned(self) -> str:
        """What carries this entry's version: the collection for a page, else the resource."""
        return self.collection if self.is_page else f"{self.collection}:{self.resource_id}"


@dataclass(frozen=True, slots=True)
class CachedResponse:
    """A response as it goes on the wire, enough to answer a later GET (or its 304)."""

    body: bytes
    status: int = 200
    media_type: str = "application/json"
    etag: str | None = None

    def encode(self) -> bytes:
        head = {"s": self.status, "t": self.media_type, "e": self.etag}
        return json.dumps(head, separators=(",", ":")).encode() + b"\n" + self.body

    @classmethod
    def decode(cls, raw: bytes) -> CachedResponse:
        head_raw, _, body = raw.partition(b"\n")
        head = json.loads(head_raw)
        return cls(body=body, status=int(head["s"]), media_type=str(head["t"]), etag=head["e"])


def _noop_result(result: CacheResult) -> None:
    return None


def tenant_prefix(tenant_slug: str) -> str:
    return f"tessera:{{{tenant_slug}}}:"


def generation_key(tenant_slug: str) -> str:
    return f"{tenant_prefix(tenant_slug)}gen"


def version_key(tenant_slug: str, versioned: str) -> str:
    """The version of a collection's pages (`projects`) or of one resource (`projects:<id>`)."""
    return f"{tenant_prefix(tenant_slug)}ver:{versioned}"


def _lookup_inputs(tenant_slug: str, key: CacheKey) -> tuple[str, str, list[str]]:
    """The generation and version keys of a lookup, and its three arguments."""
    if key.is_page:
        what, tail = key.collection, f":{key.query}"
    else:
        what, tail = f"{key.collection}:{key.resource_id}", ""
    return (
        generation_key(tenant_slug),
        version_key(tenant_slug, key.versioned),
        [tenant_prefix(tenant_slug), what, tail],
    )


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
    """A cached read counted and looked up in one round trip before routing
    (app/api/fastpath.py); the rate-limit dependency and get_or_load carry on from it."""

    count: Count
    key: CacheKey | None  # None: counted only (cache off, or a flush owed first)
    counted: list[Any] | None = None  # count_request's reply; None when Redis failed
    lookup: _Lookup | None = None  # None when not looked up: refused, Redis failed, no key
    entry: bytes | None = None  # the cached response, when there is one
    error: BaseException | None = None  # why Redis did not answer

    @property
    def tenant_slug(self) -> str:
        return self.count.tenant_slug

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
        self._lookup = redis.register_script(_LOOKUP_LUA)
        self._store_if_current = redis.register_script(_STORE_LUA)
        self._invalidate = redis.register_script(_INVALIDATE_LUA)
        self._counted = redis.register_script(_COUNTED_LUA)
        self._own_timeout = own_timeout(redis, timeout_seconds)
        # In-process single flight: concurrent misses on one entry share one load. Across
        # replicas an entry may be computed more than once, which is harmless.
        self._flights: dict[str, asyncio.Future[CachedResponse]] = {}
        # Tenants whose invalidation did not reach Redis: what Redis holds for them may
        # predate a committed write. Their next use of the cache on this replica bumps the
        # generation first, and reads bypass the cache until that bump gets through, so a
        # client reads its own writes back even across a Redis blip or restart.
        self._unflushed: set[str] = set()

    @property
    def enabled(self) -> bool:
        return self.ttl_ms > 0

    def ready(self, tenant_slug: str) -> bool:
        """Whether the tenant's entries can be looked up as they are (no flush owed first)."""
        return self.ttl_ms > 0 and tenant_slug not in self._unflushed

    async def count_and_lookup(self, count: Count, key: CacheKey | None) -> Prefetched:
        """Count the request (`count`, from the rate limiter) and look `key` up (unless it
        is None: see `ready`), in one round trip. Never raises for Redis trouble: the error
        is kept in the result, for the rate limiter and get_or_load to handle as if they
        had met it themselves."""
        keys: list[str] = list(count.keys)
        args: list[Any] = [len(count.keys), *count.args]
        if key is not None:
            gen_key, ver_key, lookup_args = _lookup_inputs(count.tenant_slug, key)
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
        tenant_slug: str,
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
            lookup, raw = await self._looked_up(tenant_slug, key, prefetched)
        except REDIS_UNAVAILABLE_ERRORS as exc:
            self.outages.report(exc)
            self.on_result("error")
            # Still one load per entry in this process: an outage must not also turn
            # into a stampede on PostgreSQL.
            return await self._single_flight(f"bypass|{tenant_slug}|{key}", load, None)
        self.outages.failing = False  # Redis answered
        if raw is not None:
            self.on_result("hit")
            return CachedResponse.decode(raw)
        self.on_result("miss")
        return await self._single_flight(lookup.entry_key, load, lookup)

    async def invalidate(self, tenant_slug: str, *keys: CacheKey) -> None:
        """Drop what a write touched, once it has committed and before its response is sent.

        A resource key drops that one entry; a page key (or `CacheKey.pages`) drops every
        page of the collection. Redis trouble is logged and swallowed, and the tenant's
        generation is bumped when Redis answers again (on this replica's next use of the
        cache for the tenant); until then other replicas may serve the old entries, for at
        most CACHE_TTL_SECONDS. Nothing to do when the cache is off.
        """
        if not self.enabled or not keys:
            return
        redis_keys = sorted({version_key(tenant_slug, k.versioned) for k in keys})
        try:
            async with asyncio.timeout(self.timeout_seconds):
                if tenant_slug in self._unflushed:
                    await self._flush(tenant_slug)  # wider than these keys: covers them
                else:
                    await self._invalidate(
                        keys=redis_keys, args=[secrets.token_hex(8), self.version_ttl_ms]
                    )
            self.outages.failing = False
        except REDIS_UNAVAILABLE_ERRORS as exc:
            self.outages.report(exc)
            self._unflushed.add(tenant_slug)

    async def bump_generation(self, tenant_slug: str) -> int | None:
        """Drop every entry of the tenant at once (a project or the tenant deleted, a tenant
        created under the slug, a migration).

        Done even when this process has the cache off: other replicas, or this one after a
        restart, may have it on, and a new tenant with the same slug must never see these
        entries. Returns the new generation, or None when Redis could not be reached.
        """
        try:
            async with asyncio.timeout(self.timeout_seconds):
                return await self._flush(tenant_slug)
        except REDIS_UNAVAILABLE_ERRORS as exc:
            self.outages.report(exc)
            self._unflushed.add(tenant_slug)
            return None

    async def _flush(self, tenant_slug: str) -> int:
        generation = int(await self.redis.incr(generation_key(tenant_slug)))
        self._unflushed.discard(tenant_slug)
        self.outages.failing = False
        return generation

    async def _looked_up(
        self, tenant_slug: str, key: CacheKey, prefetched: Prefetched | None
    ) -> tuple[_Lookup, bytes | None]:
        if (
            prefetched is not None
            and prefetched.tenant_slug == tenant_slug
            and prefetched.key == key
            and tenant_slug not in self._unflushed
        ):
            if prefetched.error is not None:
                raise prefetched.error
            if prefetched.lookup is not None:
                return prefetched.lookup, prefetched.entry
            # counted without a lookup: look up now
        async with asyncio.timeout(self.timeout_seconds):
            if tenant_slug in self._unflushed:
                await self._flush(tenant_slug)
            return await self._run_lookup(tenant_slug, key)

    async def _run_lookup(self, tenant_slug: str, key: CacheKey) -> tuple[_Lookup, bytes | None]:
        gen_key, ver_key, lookup_args = _lookup_inputs(tenant_slug, key)
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
