"""The rate-limit dependency of the tenant API: count the request, put the headers on."""

# No `from __future__ import annotations` here: FastAPI must see the real
# `Depends(tenant_dependency)` of the inner function, which a string annotation would hide.

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Protocol

from fastapi import Depends, Request

from app.api.dependencies.cache import prefetched_read
from app.core.middleware import add_response_headers
from app.services.rate_limiter import RateLimitState, TenantRateLimiter


class RateLimitedTenant(Protocol):
    """What the limiter needs of a tenant (the registry's Tenant satisfies it)."""

    @property
    def slug(self) -> str: ...

    @property
    def rate_limit(self) -> str | None: ...


async def enforce_rate_limit(request: Request, tenant: RateLimitedTenant) -> RateLimitState | None:
    """Count this request against the tenant's own limit (else RATE_LIMIT_DEFAULT).

    Raises RateLimitExceeded (429, carries its headers) or RateLimiterUnavailable (503).
    On success the X-RateLimit-* headers go on the response through the request
    middleware, so they also reach a 404 or 422 that the endpoint answers later. Returns
    None when Redis is down and the limiter fails open (no headers then: nothing true to say).
    """
    limiter: TenantRateLimiter = request.app.state.rate_limiter
    prefetched = prefetched_read(request)
    state: RateLimitState | None
    if prefetched is None or prefetched.tenant_slug != tenant.slug:
        state = await limiter.check(tenant.slug, tenant.rate_limit)
    elif prefetched.counted is None:  # the fast path's round trip failed
        assert prefetched.error is not None
        limiter.unavailable(prefetched.error)
        state = None
    else:  # already counted by the fast path (app/api/fastpath.py)
        state = limiter.settle(prefetched.count, prefetched.counted)
    if state is not None:
        add_response_headers(request, state.headers())
    return state


def rate_limit_dependency(
    tenant_dependency: Callable[..., Any],
) -> Callable[..., Awaitable[RateLimitState | None]]:
    """A dependency for a router: `dependencies=[Depends(rate_limit_dependency(get_tenant))]`.

    FastAPI caches `tenant_dependency` per request, so the endpoint's own tenant parameter
    reuses the tenant resolved here.
    """

    async def rate_limit(
        request: Request, tenant: Annotated[Any, Depends(tenant_dependency)]
    ) -> RateLimitState | None:
        return await enforce_rate_limit(request, tenant)

    return rate_limit
