"""The tenant cache on the request path: GETs read through it, writes invalidate after commit."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import Scope

from app.api.dependencies.tenant import CurrentTenant
from app.db.session import Executor, tenant_transaction
from app.services.cache import CachedResponse, CacheKey, Prefetched, TenantCache
from app.services.tenants import Tenant

Load = Callable[[Executor], Awaitable[CachedResponse]]


@dataclass(frozen=True, slots=True)
class CachedRead:
    """A cached GET: the entry it reads, and how to load it on a miss (in the tenant's
    pinned transaction). Built by the endpoint modules, for their routes and for the fast
    path (app/api/endpoints/fast_reads.py)."""

    key: CacheKey
    load: Load


# Key in the ASGI scope's request state for the round trip the fast path (app/api/fastpath.py)
# made before handing a read it could not answer to the routes: the rate-limit dependency and
# the reader carry on from it instead of asking Redis again.
PREFETCHED_STATE_KEY = "tessera_prefetched_read"


def keep_prefetched(scope: Scope, prefetched: Prefetched) -> None:
    scope.setdefault("state", {})[PREFETCHED_STATE_KEY] = prefetched


def prefetched_read(request: Request) -> Prefetched | None:
    prefetched = request.scope.get("state", {}).get(PREFETCHED_STATE_KEY)
    return prefetched if isinstance(prefetched, Prefetched) else None


@dataclass(frozen=True, slots=True)
class TenantReader:
    """Answers a tenant's GET from the cache, and opens a pinned transaction only on a miss.

    A hit therefore takes no database connection at all; concurrent misses on one entry
    share one load (and one connection) per process.
    """

    cache: TenantCache
    engine: AsyncEngine
    tenant: Tenant
    timeout: float
    prefetched: Prefetched | None = None

    async def read(self, read: CachedRead) -> CachedResponse:
        async def load_in_tenant_transaction() -> CachedResponse:
            async with tenant_transaction(
                self.engine, self.tenant.location, timeout=self.timeout, read_only=True
            ) as conn:
                return await read.load(conn)

        return await self.cache.get_or_load(
            self.tenant.slug, read.key, load_in_tenant_transaction, self.prefetched
        )


def tenant_reader(scope: Scope, tenant: Tenant, prefetched: Prefetched | None) -> TenantReader:
    state = scope["app"].state
    return TenantReader(
        state.cache, state.engine, tenant, state.settings.db_request_timeout_seconds, prefetched
    )


async def get_tenant_reader(request: Request, tenant: CurrentTenant) -> TenantReader:
    return tenant_reader(request.scope, tenant, prefetched_read(request))


CachedReads = Annotated[TenantReader, Depends(get_tenant_reader)]


@dataclass(slots=True)
class CacheInvalidation:
    """What a write changed, collected by the endpoint and applied by the connection
    dependency once the transaction has committed (app/api/dependencies/db.py)."""

    keys: list[CacheKey] = field(default_factory=list)
    whole_tenant: bool = False

    def add(self, *keys: CacheKey) -> None:
        self.keys.extend(keys)

    def everything(self) -> None:
        """Drop every entry of the tenant (a generation bump), for changes too wide to list."""
        self.whole_tenant = True

    async def apply(self, cache: TenantCache, tenant_slug: str) -> None:
        if self.whole_tenant:
            await cache.bump_generation(tenant_slug)
        elif self.keys:
            await cache.invalidate(tenant_slug, *self.keys)


async def get_cache_invalidation() -> CacheInvalidation:
    # Called once per request (FastAPI caches dependencies per request), so the endpoint
    # and the connection dependency hold the same object.
    return CacheInvalidation()


Invalidation = Annotated[CacheInvalidation, Depends(get_cache_invalidation)]
