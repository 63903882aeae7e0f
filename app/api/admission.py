"""Admission to the tenant API: the one decision on who calls, for which tenant, and whether
the tenant's rate limit lets the request through.

`admit` is called by the tenant routes' dependency (`get_admission`) and by the cached
reads answered before routing (app/api/cached_reads.py), so the two cannot disagree. In
order: the token (401), the tenant claim and the tenant (403 tenant_not_found; 401
token_predates_tenant for a token issued before the tenant was created; 403
tenant_deleted / tenant_suspended), the scope the method needs (403 insufficient_scope),
the rate limit (429, or 503 when Redis is down and the limiter fails closed). A cached read
passes the entry it will read, so counting the request and looking the entry up share one
Redis round trip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Protocol

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials
from starlette.datastructures import State

from app.api.dependencies.auth import Principal, authenticate, bearer_scheme, check_scopes
from app.api.middleware import add_response_headers
from app.core.context import tenant_keys_var, tenant_var
from app.core.errors import Forbidden, TenantNotFoundForToken, TokenPredatesTenant
from app.services.cache import Prefetched, TenantCache
from app.services.cache_entries import CacheKey
from app.services.rate_limiter import RateLimitState, TenantRateLimiter
from app.services.tenant_keys import TenantKeys
from app.services.tenants import Tenant, TenantRegistry, Unknown

READ_SCOPES = ("api:read", "api:write")
WRITE_SCOPES = ("api:write",)
READ_METHODS = ("GET", "HEAD")


class TenantSuspended(Forbidden):
    code = "tenant_suspended"


class TenantDeletedForToken(Forbidden):
    """403 `tenant_deleted`: the tenant is deleted, within its grace period (decision 0023)."""

    code = "tenant_deleted"


class RateLimitedTenant(Protocol):
    """What counting a request needs of a tenant (the registry's Tenant has it)."""

    @property
    def keys(self) -> TenantKeys: ...

    @property
    def rate_limit(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Admitted:
    """A request let in: its caller, its tenant, the rate-limit state for the response
    headers (None when Redis did not answer and the limiter fails open), and what the
    combined round trip found for the cached read, if one was named."""

    principal: Principal
    tenant: Tenant
    rate: RateLimitState | None
    prefetched: Prefetched | None = None


async def admit(
    state: State, authorization: str | None, method: str, *, lookup: CacheKey | None = None
) -> Admitted:
    """Decide a tenant API request; raises the TesseraError that answers a refusal."""
    principal = await authenticate(state.token_verifier, authorization)
    tenant = await _tenant_of(state.tenant_registry, principal)
    check_scopes(principal, *(READ_SCOPES if method in READ_METHODS else WRITE_SCOPES))
    rate, prefetched = await count_request(state, tenant, lookup)
    return Admitted(principal, tenant, rate, prefetched)


async def count_request(
    state: State, tenant: RateLimitedTenant, lookup: CacheKey | None = None
) -> tuple[RateLimitState | None, Prefetched | None]:
    """Count the request against the tenant's own limit (else RATE_LIMIT_DEFAULT), and look
    `lookup` up in the same round trip. Raises RateLimitExceeded (429), or
    RateLimiterUnavailable (503) when Redis did not answer and the limiter fails closed;
    the state is None when it did not answer and the limiter fails open."""
    limiter: TenantRateLimiter = state.rate_limiter
    cache: TenantCache = state.cache
    if lookup is None or not cache.ready(tenant.keys):
        return await limiter.check(tenant.keys, tenant.rate_limit), None
    prefetched = await cache.count_and_lookup(
        limiter.count_for(tenant.keys, tenant.rate_limit), lookup
    )
    if prefetched.counted is None:  # Redis did not answer
        assert prefetched.error is not None
        limiter.unavailable(prefetched.error)
        return None, prefetched
    return limiter.settle(prefetched.count, prefetched.counted), prefetched


async def _tenant_of(registry: TenantRegistry, principal: Principal) -> Tenant:
    """The caller's tenant: it must exist, be the one the token was issued for, and be
    active. Checked before scopes, so an admin token without a tenant claim gets
    `tenant_not_found` on the tenant API.

    A token issued (`iat`) before the tenant was created, less the leeway, was issued for an
    earlier tenant of the same slug (deleted since): 401 token_predates_tenant. A token
    without `iat` cannot be placed in time and is accepted (CONTRACT: `iat` is checked when
    present); issuers should set it (README, "Authentication")."""
    if principal.tenant is None:
        raise TenantNotFoundForToken("The token names no tenant.")
    tenant = registry.peek(principal.tenant)
    if isinstance(tenant, Unknown):
        tenant = await registry.get(principal.tenant)
    if tenant is None:
        raise TenantNotFoundForToken("The token's tenant does not exist.")
    tenant_var.set(tenant.slug)
    tenant_keys_var.set(tenant.keys.prefix)
    issued_at = principal.issued_at
    if issued_at is not None and issued_at < tenant.created_at - registry.token_leeway:
        raise TokenPredatesTenant(
            "The token was issued before its tenant was created; it was meant for an "
            "earlier tenant of that slug."
        )
    if tenant.status == "deleted":
        raise TenantDeletedForToken("This tenant is deleted.")
    if tenant.status != "active":
        raise TenantSuspended("This tenant is suspended.")
    return tenant


async def get_admission(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)] = None,
) -> Admitted:
    """The tenant routes' dependency (on their router, so a refused request never takes a
    database connection). The rate-limit headers go on the response through the request
    middleware, so they also reach a 404 or 422 that the endpoint answers later."""
    admitted = await admit(
        request.app.state, request.headers.get("authorization"), request.scope["method"]
    )
    if admitted.rate is not None:
        add_response_headers(request, admitted.rate.headers())
    return admitted


AdmittedDep = Annotated[Admitted, Depends(get_admission)]


# Every dependency here is `async def`: FastAPI runs a plain `def` dependency in a thread
# of its pool, a thread hop per request for what is an attribute read.
async def get_current_tenant(admitted: AdmittedDep) -> Tenant:
    return admitted.tenant


CurrentTenant = Annotated[Tenant, Depends(get_current_tenant)]
