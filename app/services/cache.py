"""Read-through cache of tenant GET responses in Redis, keyed per tenant and per generation.

Key layout (the braces are the Redis Cluster hash tag: every key of a tenant on one slot):

    tessera:{acme}:gen                      the tenant's generation; a bump drops everything
    tessera:{acme}:ver:<collection>         a collection's version; a bump drops all its pages
    tessera:{acme}:<gen>:<collection>:<id>           one resource
    tessera:{acme}:<gen>:<collection>@<ver>:<query>  one page of a collection's listing

Counters never expire: were one to vanish and restart at 0, entries written under an older
0 could be served again. A deleted tenant leaves those few bytes behind.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from app.core.redis import REDIS_UNAVAILABLE_ERRORS, RedisOutageLog

logger = logging.getLogger("tessera.cache")

CacheResult = Literal["hit", "miss", "error"]

_NAME = re.compile(r"^[A-Za-z0-9_./-]{1,200}$")

# One round trip for a lookup: read the generation (and the collection version for a page),
# build the entry key, read the entry. The key is returned so that a miss is stored under
# the versions seen *before* loading: a write that invalidates meanwhile moves readers to a
# new key, and the late store lands where nobody looks. Entry keys are built inside the
# script, which Redis Cluster accepts because they share the tenant's hash tag (slot).
_LOOKUP_LUA = """
local generation = redis.call('GET', KEYS[1]) or '0'
local key = ARGV[1] .. generation .. ':' .. ARGV[2]
if #KEYS > 1 then
  key = key .. '@' .. (redis.call('GET', KEYS[2]) or '0')
end
key = key .. ':' .. ARGV[3]
return {key, redis.call('GET', key)}
"""

# One round trip for a write: drop the named resources under the current generation and
# bump the named collections' versions (all their pages at once, O(1)).
# ARGV: prefix, number of resources, resource suffixes...
_INVALIDATE_LUA = """
local generation = redis.call('GET', KEYS[1]) or '0'
local resources = tonumber(ARGV[2])
for i = 1, resources do
  redis.call('DEL', ARGV[1] .. generation .. ':' .. ARGV[2 + i])
end
for i = 2, #KEYS do
  redis.call('INCR', KEYS[i])
end
return resources + #KEYS - 1
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
        if not _NAME.match(self.collection):
            raise ValueError(f"collection {self.collection!r} is not a cache name")
        if self.resource_id is not None and not _NAME.match(self.resource_id):
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


def version_key(tenant_slug: str, collection: str) -> str:
    return f"{tenant_prefix(tenant_slug)}ver:{collection}"


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
        self.timeout_seconds = timeout_seconds
        self.on_result = on_result
        self.outages = RedisOutageLog("cache", interval_seconds=outage_log_interval_seconds)
        self._lookup = redis.register_script(_LOOKUP_LUA)
        self._invalidate = redis.register_script(_INVALIDATE_LUA)
        # In-process single flight: concurrent misses on one entry share one load. Across
        # replicas an entry may be computed more than once, which is harmless.
        self._flights: dict[str, asyncio.Future[CachedResponse]] = {}

    async def get_or_load(
        self,
        tenant_slug: str,
        key: CacheKey,
        load: Callable[[], Awaitable[CachedResponse]],
    ) -> CachedResponse:
        """The cached response, else `load()`'s (stored when it is a 200).

        Redis trouble never fails the request: the cache is bypassed, `load()` answers.
        """
        if self.ttl_ms == 0:
            return await load()
        entry_key: str | None = None
        try:
            async with asyncio.timeout(self.timeout_seconds):
                entry_key, raw = await self._run_lookup(tenant_slug, key)
        except REDIS_UNAVAILABLE_ERRORS as exc:
            self.outages.report(exc)
            self.on_result("error")
            # Still one load per entry in this process: an outage must not also turn
            # into a stampede on PostgreSQL.
            return await self._single_flight(f"bypass|{tenant_slug}|{key}", load, store=False)
        if raw is not None:
            self.on_result("hit")
            return CachedResponse.decode(raw)
        self.on_result("miss")
        return await self._single_flight(entry_key, load, store=True)

    async def invalidate(self, tenant_slug: str, *keys: CacheKey) -> None:
        """Drop what a write touched, before its response is sent.

        A resource key drops that one entry; a page key (or `CacheKey.pages`) drops every
        page of the collection. Redis trouble is logged and swallowed: entries then live
        at most CACHE_TTL_SECONDS.
        """
        resources = [k.resource_id for k in keys if not k.is_page]
        collections = sorted({k.collection for k in keys if k.is_page})
        suffixes = [f"{k.collection}:{k.resource_id}" for k in keys if not k.is_page]
        redis_keys = [generation_key(tenant_slug)] + [
            version_key(tenant_slug, c) for c in collections
        ]
        args = [tenant_prefix(tenant_slug), len(resources), *suffixes]
        try:
            async with asyncio.timeout(self.timeout_seconds):
                await self._invalidate(keys=redis_keys, args=args)
        except REDIS_UNAVAILABLE_ERRORS as exc:
            self.outages.report(exc)

    async def bump_generation(self, tenant_slug: str) -> int | None:
        """Drop every entry of the tenant at once (delete, restore, migrations).

        Returns the new generation, or None when Redis could not be reached.
        """
        try:
            async with asyncio.timeout(self.timeout_seconds):
                return int(await self.redis.incr(generation_key(tenant_slug)))
        except REDIS_UNAVAILABLE_ERRORS as exc:
            self.outages.report(exc)
            return None

    async def _run_lookup(self, tenant_slug: str, key: CacheKey) -> tuple[str, bytes | None]:
        redis_keys = [generation_key(tenant_slug)]
        if key.is_page:
            redis_keys.append(version_key(tenant_slug, key.collection))
            tail = key.query or ""
        else:
            tail = key.resource_id or ""
        entry_key, raw = await self._lookup(
            keys=redis_keys, args=[tenant_prefix(tenant_slug), key.collection, tail]
        )
        return entry_key.decode(), raw

    async def _single_flight(
        self, flight_key: str, load: Callable[[], Awaitable[CachedResponse]], *, store: bool
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
            if store and response.status == 200:
                await self._store(flight_key, response)
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

    async def _store(self, entry_key: str, response: CachedResponse) -> None:
        try:
            async with asyncio.timeout(self.timeout_seconds):
                await self.redis.set(entry_key, response.encode(), px=self.ttl_ms)
        except REDIS_UNAVAILABLE_ERRORS as exc:
            self.outages.report(exc)
