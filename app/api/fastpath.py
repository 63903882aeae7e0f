"""Cached tenant reads answered before routing: one Redis round trip, no FastAPI dependencies.

A GET of a route in `FAST_READS` (app/api/endpoints/_cache_keys.py), from a token this
process has verified before, of a tenant the registry knows to be active right now, is
counted against the tenant's rate limit and looked up in the cache in one Lua call
(TenantCache.count_and_lookup). When the entry is there the answer goes out from here, the
same bytes and headers the route would send (tests/integration/test_fastpath.py holds both
side by side). Everything else goes on to the routes unchanged, which decide every error:
an unknown token, a suspended tenant, a missing scope, a refused request, a Redis outage,
a miss. What the round trip found goes with the request (PREFETCHED_STATE_KEY), so a miss
or a refusal is counted once and Redis is not asked twice.

Why: FastAPI's dependency resolution, the second Redis round trip and the Response object
cost more than the whole bare read they are measured against
(docs/decisions/0011-cached-reads-before-routing.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fastapi.routing import iter_route_contexts
from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.dependencies.auth import bearer_token
from app.api.dependencies.cache import keep_prefetched
from app.api.dependencies.tenant import READ_SCOPES
from app.api.endpoints._cache_keys import FAST_READS, FastReadKey
from app.api.preconditions import none_match
from app.core.context import tenant_var
from app.core.middleware import header_value
from app.core.security import TokenVerifier
from app.services.cache import CachedResponse, CacheKey, TenantCache
from app.services.rate_limiter import TenantRateLimiter
from app.services.tenants import Tenant, TenantRegistry


@dataclass(frozen=True, slots=True)
class _FastRoute:
    pattern: re.Pattern[str]
    key_for: FastReadKey
    route: object  # the app's own route, for the access log's route template


class CachedReadFastPath:
    """Pure ASGI middleware, inside the request middleware (so the request id, the access
    log and the metrics cover what it answers) and outside FastAPI's routing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._routes: list[_FastRoute] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "GET"
            and scope["path"].startswith("/v1/")
            and await self._answer(scope, send)
        ):
            return
        await self.app(scope, receive, send)

    async def _answer(self, scope: Scope, send: Send) -> bool:
        """Send the cached answer and return True, or return False to let the routes answer."""
        state = scope["app"].state
        cache: TenantCache = state.cache
        if not cache.enabled:
            return False
        found = self._match(scope)
        if found is None:
            return False
        route, key = found
        token = bearer_token(_header(scope, b"authorization") or "")
        verifier: TokenVerifier = state.token_verifier
        claims = None if token is None else verifier.remembered(token)
        if claims is None or claims.tenant is None or claims.scopes.isdisjoint(READ_SCOPES):
            return False
        registry: TenantRegistry = state.tenant_registry
        tenant = registry.peek(claims.tenant)
        if not isinstance(tenant, Tenant) or tenant.status != "active":
            return False
        if not cache.ready(tenant.slug):
            return False

        limiter: TenantRateLimiter = state.rate_limiter
        tenant_var.set(tenant.slug)
        prefetched = await cache.count_and_lookup(
            limiter.count_for(tenant.slug, tenant.rate_limit), key
        )
        if prefetched.entry is None or prefetched.counted is None:
            keep_prefetched(scope, prefetched)  # a miss, a refusal or an outage: the route's
            return False
        limits = limiter.settle(prefetched.count, prefetched.counted)  # allowed: it was looked up
        cache.on_result("hit")
        cached = CachedResponse.decode(prefetched.entry)
        scope["route"] = route.route

        headers = [
            (name.lower().encode(), value.encode()) for name, value in limits.headers().items()
        ]
        if cached.etag is not None:
            headers.append((b"etag", cached.etag.encode()))
            if none_match(_header(scope, b"if-none-match"), cached.etag):
                await send({"type": "http.response.start", "status": 304, "headers": headers})
                await send({"type": "http.response.body", "body": b""})
                return True
        headers.append((b"content-length", str(len(cached.body)).encode()))
        headers.append((b"content-type", cached.media_type.encode()))
        await send({"type": "http.response.start", "status": cached.status, "headers": headers})
        await send({"type": "http.response.body", "body": cached.body})
        return True

    def _match(self, scope: Scope) -> tuple[_FastRoute, CacheKey] | None:
        routes = self._routes
        if routes is None:
            routes = self._routes = _fast_routes(scope["app"].routes)
        path: str = scope["path"]
        for route in routes:
            match = route.pattern.match(path)
            if match is not None:
                key = route.key_for(match.groupdict(), scope["query_string"])
                return None if key is None else (route, key)
        return None


def _fast_routes(app_routes: list[object]) -> list[_FastRoute]:
    """FAST_READS resolved against the app's GET routes; a template the app does not serve
    is a programming error, refused on the first request (and in the tests)."""
    by_template = {
        ctx.path_format: ctx
        for ctx in iter_route_contexts(app_routes)  # type: ignore[arg-type]
        if "GET" in (ctx.methods or ())
    }
    routes = []
    for template, key_for in FAST_READS.items():
        route = by_template.get(template)
        if route is None:
            raise RuntimeError(f"FAST_READS names {template}, which is no GET route of the app")
        pattern, _, _ = compile_path(template)
        routes.append(_FastRoute(pattern, key_for, route))
    return routes


def _header(scope: Scope, name: bytes) -> str | None:
    value = header_value(scope, name)
    return None if value is None else value.decode("latin-1")
