"""Database dependencies: the engine, and a transaction pinned to the caller's tenant whose
changes leave the cache once it has committed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.datastructures import State

from app.api.admission import Admitted, AdmittedDep
from app.api.dependencies.auth import Principal
from app.db.executor import Executor
from app.services.cache import TenantCache
from app.services.cache_entries import CacheKey
from app.services.quotas import UNLIMITED, TenantQuotas
from app.services.tenant_keys import TenantKeys


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

    async def apply(self, cache: TenantCache, tenant: TenantKeys) -> None:
        if self.whole_tenant:
            await cache.bump_generation(tenant)
        elif self.keys:
            await cache.invalidate(tenant, *self.keys)


@dataclass(frozen=True, slots=True)
class TenantWrite:
    """A request's work in its tenant: the pinned transaction, the caller, the cache entries
    to drop once it has committed, and the versions If-Match allows (None: any; set by the
    route that takes If-Match), and the tenant's quotas."""

    conn: Executor
    actor: Principal
    invalidation: CacheInvalidation
    versions: Collection[int] | None = None
    quotas: TenantQuotas = UNLIMITED  # the tenant's, for its creates


@asynccontextmanager
async def tenant_write(
    state: State, admitted: Admitted, *, first: str | None = None
) -> AsyncIterator[TenantWrite]:
    """One transaction per write request, pinned to the tenant before anything else runs.

    Commits when the block ends, rolls back when it raises; both happen before the response
    is sent, so a failed commit is never a 2xx.

    What the block changed leaves the cache after the COMMIT and still before the response:
    invalidating earlier would let a concurrent reader load the old row and cache it again
    under the new version. A rolled-back request invalidates nothing.

    Used by the route dependency below and by the early path of declared writes
    (app/api/writes_first.py), so the two cannot differ; `first` (the early path's claim
    of an Idempotency-Key) rides in the BEGIN's round trip (`TenantConnections.transaction`).
    """
    tenant = admitted.tenant
    invalidation = CacheInvalidation()
    async with state.connections.transaction(
        tenant.location,
        timeout=state.settings.db_request_timeout_seconds,
        share=tenant.share,
        first=first,
    ) as conn:
        yield TenantWrite(conn, admitted.principal, invalidation, quotas=tenant.quotas)
    await invalidation.apply(state.cache, tenant.keys)


async def get_tenant_write(request: Request, admitted: AdmittedDep) -> AsyncIterator[TenantWrite]:
    """`tenant_write` as the route's dependency (scope="function" below: it ends before the
    response is sent). One dependency for all of it: FastAPI's resolution of each
    dependency costs CPU on every request (docs/decisions/0015-writes-in-one-statement.md).
    """
    async with tenant_write(request.app.state, admitted) as write:
        yield write


TenantWork = Annotated[TenantWrite, Depends(get_tenant_write, scope="function")]
