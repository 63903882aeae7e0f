"""Database dependencies: the engine, and a transaction pinned to the caller's tenant whose
changes leave the cache once it has committed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from app.api.admission import CurrentTenant
from app.db.executor import Executor
from app.services.cache import TenantCache
from app.services.cache_entries import CacheKey


async def get_engine(request: Request) -> AsyncEngine:
    engine: AsyncEngine = request.app.state.engine
    return engine


EngineDep = Annotated[AsyncEngine, Depends(get_engine)]


@dataclass(slots=True)
class CacheInvalidation:
    """What a write changed, collected by the endpoint and applied by the connection
    dependency once the transaction has committed."""

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


async def get_tenant_connection(
    request: Request, tenant: CurrentTenant, invalidation: Invalidation
) -> AsyncIterator[Executor]:
    """One transaction per request, pinned to the tenant before anything else runs.

    Commits when the endpoint returns, rolls back when it raises; both happen before the
    response is sent (scope="function" below), so a failed commit is never a 2xx.

    What the endpoint changed leaves the cache after the COMMIT and still before the
    response: invalidating earlier would let a concurrent reader load the old row and cache
    it again under the new version. A rolled-back request invalidates nothing.
    """
    state = request.app.state
    async with state.connections.transaction(
        tenant.location, timeout=state.settings.db_request_timeout_seconds
    ) as conn:
        yield conn
    await invalidation.apply(state.cache, tenant.slug)


TenantConnection = Annotated[Executor, Depends(get_tenant_connection, scope="function")]
