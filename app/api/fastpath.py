"""Cached tenant reads served before routing: one Redis round trip, no FastAPI dependencies.

A GET of a route in `FAST_READS` (app/api/endpoints/fast_reads.py), from a token this
process has verified before, of a tenant the registry knows to be active right now, is
counted against the tenant's rate limit and looked up in the cache in one Lua call
(TenantCache.count_and_lookup), then answered here: from the cache on a hit, else by the
route's own loader in the tenant's pinned transaction (TenantReader, as the route does).
The answer is the route's own, byte for byte and header for header
(tests/integration/test_fastpath.py holds both side by side); errors the loader raises
(404) are answered as the exception handlers would.

Everything else goes on to the routes unchanged, and they decide it: an unknown token, a
suspended tenant, a missing scope, a refused request (429), a Redis outage. What the round
trip found goes with the request (PREFETCHED_STATE_KEY), so the request is counted once
and Redis is not asked twice.

Why: FastAPI's dependency resolution, validation and Response objects cost more than the
whole bare read Tessera is measured against (docs/decisions/0011-cached-reads-before-routing.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fastapi.routing import iter_route_contexts
from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.dependencies.auth import bearer_token
from app.api.dependencies.cache import CachedRead, keep_prefetched, tenant_reader
from app.api.dependencies.tenant import READ_SCOPES
from app.api.endpoints._resources import from_cached
from app.api.endpoints.fast_reads import FAST_READS, FastRead
from app.core.context import tenant_var
from app.core.errors import TesseraError, error_response
from app.core.middleware import add_response_headers, header_value
from app.core.security import TokenVerifier
from app.services.cache import CachedResponse, TenantCache
from app.services.rate_limiter import TenantRateLimiter
from app.services.tenants import Tenant, TenantRegistry


@dataclass(frozen=True, slots=True)
class _FastRoute:
    pattern: re.Pattern[str]
    read_for: FastRead
    route: object  # the app's own route, for the access log's route template


class CachedReadFastPath:
    """Pure ASGI middleware, inside the request middleware (so the request id, the pending
    response headers, the access log and the metrics cover what it answers) and outside
    FastAPI's routing."""

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
        """Answer the request and return True, or return False to let the routes answer."""
        found = self._match(scope)
        if found is None:
            return False
        route, read = found
        state = scope["app"].state
        token = bearer_token(_header(scope, b"authorization") or "")
        verifier: TokenVerifier = state.token_verifier
        claims = None if token is None else verifier.remembered(token)
        if claims is None or claims.tenant is None or claims.scopes.isdisjoint(READ_SCOPES):
            return False
        registry: TenantRegistry = state.tenant_registry
        tenant = registry.peek(claims.tenant)
        if not isinstance(tenant, Tenant) or tenant.status != "active":
            return False

        cache: TenantCache = state.cache
        limiter: TenantRateLimiter = state.rate_limiter
        tenant_var.set(tenant.slug)
        prefetched = await cache.count_and_lookup(
            limiter.count_for(tenant.slug, tenant.rate_limit),
            read.key if cache.ready(tenant.slug) else None,
        )
        if not prefetched.allowed:  # refused, or Redis did not answer: the routes decide
            keep_prefetched(scope, prefetched)
            return False
        assert prefetched.counted is not None
        add_response_headers(scope, limiter.settle(prefetched.count, prefetched.counted).headers())
        scope["route"] = route.route
        if prefetched.entry is not None:
            cache.on_result("hit")
            cached = CachedResponse.decode(prefetched.entry)
        else:
            try:
                cached = await tenant_reader(scope, tenant, prefetched).read(read)
            except TesseraError as exc:
                await error_response(exc)(scope, _no_body, send)
                return True
        response = from_cached(cached, if_none_match=_header(scope, b"if-none-match"))
        await response(scope, _no_body, send)
        return True

    def _match(self, scope: Scope) -> tuple[_FastRoute, CachedRead] | None:
        routes = self._routes
        if routes is None:
            routes = self._routes = _fast_routes(scope["app"].routes)
        path: str = scope["path"]
        for route in routes:
            match = route.pattern.match(path)
            if match is not None:
                read = route.read_for(match.groupdict(), scope["query_string"])
                return None if read is None else (route, read)
        return None


async def _no_body() -> dict[str, object]:
    return {"type": "http.request", "body": b"", "more_body": False}


def _fast_routes(app_routes: list[object]) -> list[_FastRoute]:
    """FAST_READS resolved against the app's GET routes; a template the app does not serve
    is a programming error, refused on the first request (and in the tests)."""
    by_template = {
        ctx.path_format: ctx
        for ctx in iter_route_contexts(app_routes)  # type: ignore[arg-type]
        if "GET" in (ctx.methods or ())
    }
    routes = []
    for template, read_for in FAST_READS.items():
        route = by_template.get(template)
        if route is None:
            raise RuntimeError(f"FAST_READS names {template}, which is no GET route of the app")
        pattern, _, _ = compile_path(template)
        routes.append(_FastRoute(pattern, read_for, route))
    return routes


def _header(scope: Scope, name: bytes) -> str | None:
    value = header_value(scope, name)
    return None if value is None else value.decode("latin-1")
