"""The /metrics side of the HTTP layer: request instrumentation by route template, the
scrape-time collection (pool, tenant counts) and the text the endpoint serves."""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts
from prometheus_client import generate_latest
from prometheus_fastapi_instrumentator.metrics import Info
from prometheus_fastapi_instrumentator.middleware import PrometheusInstrumentatorMiddleware
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool
from starlette._utils import get_route_path  # what FastAPI's own routes match against
from starlette.requests import Request
from starlette.routing import Match, Route

from app.metrics import (
    DB_POOL_CHECKED_OUT,
    DB_POOL_MAX,
    DB_POOL_SIZE,
    EXCLUDED_HANDLERS,
    REGISTRY,
    SCRAPE_QUERY_TIMEOUT_SECONDS,
    TENANTS_BEHIND_HEAD,
    http_duration,
    http_requests,
    set_database_up,
    set_tenant_counts,
    set_tenant_usage,
)
from app.services import tenants as tenant_service
from app.services import usage as usage_service

logger = logging.getLogger("tessera.metrics")


def _record_http(info: Info) -> None:
    http_requests(info.modified_handler, info.method, info.modified_status).inc()
    http_duration(info.modified_handler, info.method).observe(info.modified_duration)


@dataclass(frozen=True, slots=True)
class _Template:
    """One route as the handler label sees it: its template, its pattern and its methods.

    `regex` is None for routes that are not plain HTTP routes (mounts), which are asked to
    match themselves."""

    path_format: str
    regex: re.Pattern[str] | None
    methods: frozenset[str] | None
    context: RouteContext
    prefix: str  # the template's text before its first parameter: every match starts so


def _template(context: RouteContext) -> _Template:
    plain = isinstance(context.original_route, APIRoute | Route)
    regex = getattr(context, "path_regex", None) if plain else None
    methods = context.methods
    path_format = str(context.path_format)
    return _Template(
        path_format,
        regex,
        frozenset(methods) if methods else None,
        context,
        path_format.split("{", 1)[0] if regex is not None else "",
    )


def _head(path: str) -> str:
    """A path's first two segments ("/v1/tasks" of "/v1/tasks/..."), or all of a shorter one."""
    return "/".join(path.split("/", 3)[:3])


class _Candidates:
    """The routes a path may match, in routing order, found by the path's first two
    segments: a template whose literal prefix holds both ("/v1/tasks/" of "/v1/tasks/{id}",
    or a whole template without parameters) can only match paths that start with them; the
    others (shorter prefixes, mounts) are candidates for every path. About 40 prefix tests a
    request became a dict lookup and the few routes of one resource."""

    def __init__(self, routes: list[_Template]) -> None:
        keyed: dict[str, list[int]] = {}
        general: list[int] = []
        for index, route in enumerate(routes):
            literal = route.regex is not None and "{" not in route.path_format
            if literal or route.prefix.count("/") >= 3:
                head = _head(route.path_format if literal else route.prefix)
                keyed.setdefault(head, []).append(index)
            else:
                general.append(index)
        self._general = [routes[i] for i in general]
        self._by_head = {
            head: [routes[i] for i in sorted(indexes + general)] for head, indexes in keyed.items()
        }

    def of(self, path: str) -> list[_Template]:
        return self._by_head.get(_head(path), self._general)


class RouteTemplateMiddleware(PrometheusInstrumentatorMiddleware):
    """The instrumentator's middleware, with handler labels resolved on FastAPI's routes.

    The stock resolver reads `route.path` on each top-level route, which FastAPI's included
    routers no longer have (AttributeError on every request). `iter_route_contexts` is
    FastAPI's own flattening of included routers, with the full template as `path_format`;
    plain routes are matched on their compiled pattern directly, which costs a regex match
    each instead of a full route match (a child scope, converted parameters) each, and only
    when the path starts with the template's literal prefix (docs/decisions/0027).
    """

    _routes: _Candidates
    _routes_key: int = -1

    def _get_handler(self, request: Request) -> tuple[str, bool]:
        app_routes = request.app.routes
        # Routes are fixed once the app serves; rebuild only if the top level changed.
        if len(app_routes) != self._routes_key:
            self._routes = _Candidates([_template(ctx) for ctx in iter_route_contexts(app_routes)])
            self._routes_key = len(app_routes)
        scope = request.scope
        path = get_route_path(scope)
        method = scope["method"]
        partial: str | None = None
        for route in self._routes.of(path):
            if route.regex is None:
                match, _ = route.context.matches(scope)
            elif not path.startswith(route.prefix) or route.regex.match(path) is None:
                continue  # the prefix test first: most routes fail it, at a fraction of a match
            else:
                full = route.methods is None or method in route.methods
                match = Match.FULL if full else Match.PARTIAL
            if match is Match.FULL:
                return route.path_format, True
            if match is Match.PARTIAL and partial is None:  # method not allowed: same route
                partial = route.path_format
        if partial is not None:
            return partial, True
        return request.url.path, False


def instrument(app: FastAPI) -> None:
    """Add the HTTP instrumentation middleware: route templates as handlers, `none` when
    unmatched, status codes kept exact, platform endpoints excluded."""
    # The library types its `app` argument as Starlette rather than an ASGI app.
    app.add_middleware(
        RouteTemplateMiddleware,  # type: ignore[arg-type]
        should_group_status_codes=False,
        should_ignore_untemplated=False,
        should_group_untemplated=True,
        should_instrument_requests_inprogress=False,
        excluded_handlers=[f"^{path}$" for path in EXCLUDED_HANDLERS],
        # One closure instead of the default bundle: two metrics, not five (no size
        # summaries, no unlabelled high-resolution histogram) on every request.
        instrumentations=[_record_http],
        registry=REGISTRY,
    )


def token_matches(expected: str, presented: str) -> bool:
    """Constant-time comparison, so response timing does not reveal the token's prefix."""
    return hmac.compare_digest(presented.encode(), expected.encode())


def tenant_migrations_head() -> str | None:
    """The head revision of `migrations/tenant` (read once per process by the migrations'
    own loader), or None where that tree cannot be read."""
    try:
        return tenant_service.tenant_migrations_head()
    except Exception as exc:  # a broken tree must not break /metrics
        logger.warning("metrics: cannot read tenant migrations head: %s", exc)
        return None


def collect_pool(engine: AsyncEngine) -> None:
    pool = engine.sync_engine.pool
    if isinstance(pool, QueuePool):
        DB_POOL_CHECKED_OUT.set(pool.checkedout())
        DB_POOL_SIZE.set(pool.size())
        DB_POOL_MAX.set(pool.size() + pool._max_overflow)


async def collect_tenants(engine: AsyncEngine, head: str | None) -> None:
    """Refresh the registry gauges from PostgreSQL, so every replica reports the truth.

    A missing table (tenancy not migrated) or an unreachable database leaves the gauges as
    they were and only sets `tessera_database_up`; /metrics itself always answers.
    """
    try:
        async with asyncio.timeout(SCRAPE_QUERY_TIMEOUT_SECONDS):
            rows = await tenant_service.count_by_status(engine, head)
    except ProgrammingError as exc:  # reached PostgreSQL; the registry is not there (yet)
        set_database_up(True)
        logger.debug("metrics: tenant registry not readable: %s", type(exc.orig).__name__)
        return
    except Exception as exc:  # unreachable, timed out, refused: never break the scrape
        set_database_up(False)
        logger.warning("metrics: database unreachable at scrape: %s", type(exc).__name__)
        return
    set_database_up(True)
    set_tenant_counts({status: count for status, count, _ in rows})
    if head is not None:
        TENANTS_BEHIND_HEAD.set(sum(behind for _, _, behind in rows))


async def collect_usage(engine: AsyncEngine) -> None:
    """The storage and quota-use gauges from the kept usage figures (one indexed read; the
    refresh job measures). Like collect_tenants, a failure leaves them as they were."""
    try:
        async with asyncio.timeout(SCRAPE_QUERY_TIMEOUT_SECONDS):
            kept = await usage_service.all_kept(engine)
    except Exception as exc:
        logger.debug("metrics: usage figures not readable: %s", type(exc).__name__)
        return
    set_tenant_usage(
        [(k.slug, k.storage_bytes) for k in kept],
        [
            (k.slug, use.quota, use.percent / 100)
            for k in kept
            for use in k.quotas
            if use.percent is not None
        ],
    )


async def render(engine: AsyncEngine) -> bytes:
    """Collect the scrape-time metrics, then the whole registry in the text format."""
    collect_pool(engine)
    await collect_tenants(engine, tenant_migrations_head())
    await collect_usage(engine)
    return generate_latest(REGISTRY)
