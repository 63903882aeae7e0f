"""Database dependencies: the engine, and a transaction pinned to the caller's tenant."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from app.api.dependencies.cache import Invalidation
from app.api.dependencies.tenant import CurrentTenant
from app.db.session import Executor, tenant_transaction


def get_engine(request: Request) -> AsyncEngine:
    engine: AsyncEngine = request.app.state.engine
    return engine


EngineDep = Annotated[AsyncEngine, Depends(get_engine)]


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
    settings = request.app.state.settings
    async with tenant_transaction(
        request.app.state.engine, tenant.location, timeout=settings.db_request_timeout_seconds
    ) as conn:
        yield conn
    await invalidation.apply(request.app.state.cache, tenant.slug)


TenantConnection = Annotated[Executor, Depends(get_tenant_connection, scope="function")]
