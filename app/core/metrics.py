"""Prometheus metrics: the HTTP metrics and every `tessera_*` metric of CONTRACT section 9."""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_fastapi_instrumentator.metrics import Info
from prometheus_fastapi_instrumentator.middleware import PrometheusInstrumentatorMiddleware
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool
from starlette._utils import get_route_path  # what FastAPI's own routes match against
from starlette.requests import Request
from starlette.routing import Match, Route

logger = logging.getLogger("tessera.metrics")

# `_created` series double every counter's output and no dashboard uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

# One registry for the process, so several apps built in one process (tests) share metrics
# instead of failing on duplicate registration, and nothing registered elsewhere leaks in.
REGISTRY = CollectorRegistry(auto_describe=True)
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)

CONTENT_TYPE = CONTENT_TYPE_LATEST
OTHER_TENANT = "_other"
EXCLUDED_HANDLERS = ("/metrics", "/healthz", "/readyz")
TENANT_STATUSES = ("active", "suspended")
CACHE_RESULTS = ("hit", "miss", "error")
JWKS_RESULTS = ("success", "error")
RedisComponent = Literal["cache", "rate_limiter"]
REDIS_COMPONENTS: tuple[RedisComponent, ...] = ("cache", "rate_limiter")
SCRAPE_QUERY_TIMEOUT_SECONDS = 2.0

# Buckets fine enough for a p99 alert at 500 ms and a dashboard from 5 ms to 10 s.
HTTP_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
PROVISIONING_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

HTTP_REQUESTS = Counter(
    "http_requests_total",
    "Requests by route template, method and status code.",
    ("handler", "method", "status"),
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "http_request_duration_seconds",
    "Request duration by route template and method.",
    ("handler", "method"),
    buckets=HTTP_LATENCY_BUCKETS,
    registry=REGISTRY,
)
TENANT_REQUESTS = Counter(
    "tessera_tenant_requests_total",
    "Requests of known tenants by status class; tenants past METRICS_MAX_TENANTS share _other.",
    ("tenant", "status_class"),
    registry=REGISTRY,
)
RATE_LIMIT_REJECTIONS = Counter(
    "tessera_rate_limit_rejections_total",
    "Requests answered 429 by the per-tenant rate limiter.",
    ("tenant",),
    registry=REGISTRY,
)
CACHE_REQUESTS = Counter(
    "tessera_cache_requests_total",
    "Tenant cache lookups by result (error: Redis unreachable, cache bypassed).",
    ("result",),
    registry=REGISTRY,
)
TENANTS = Gauge(
    "tessera_tenants",
    "Tenants by status, read from the registry at scrape time.",
    ("status",),
    registry=REGISTRY,
)
TENANTS_BEHIND_HEAD = Gauge(
    "tessera_tenants_behind_head",
    "Tenants whose schema_version is not the head of the tenant migrations.",
    registry=REGISTRY,
)
PROVISIONING_SECONDS = Histogram(
    "tessera_tenant_provisioning_seconds",
    "Time to provision a tenant (role, schema, tables, grants).",
    buckets=PROVISIONING_BUCKETS,
    registry=REGISTRY,
)
JWKS_REFRESHES = Counter(
    "tessera_jwks_refreshes_total",
    "JWKS fetches from the issuer by result.",
    ("result",),
    registry=REGISTRY,
)
DATABASE_UP = Gauge(
    "tessera_database_up",
    "1 when the last scrape-time or readiness query reached PostgreSQL, else 0.",
    registry=REGISTRY,
)
REDIS_DEGRADED = Gauge(
    "tessera_redis_degraded",
    "1 while this Redis user cannot use Redis (a node down, a Cluster not ok, or its latest "
    "Redis call failed), else 0; set by /readyz and at scrape time.",
    ("component",),
    registry=REGISTRY,
)
DB_POOL_CHECKED_OUT = Gauge(
    "tessera_db_pool_checked_out",
    "Connections of the shared pool in use right now.",
    registry=REGISTRY,
)
DB_POOL_SIZE = Gauge(
    "tessera_db_pool_size",
    "Connections the pool keeps open (DB_POOL_SIZE).",
    registry=REGISTRY,
)
DB_POOL_MAX = Gauge(
    "tessera_db_pool_max_connections",
    "Most connections the pool opens (DB_POOL_SIZE + DB_MAX_OVERFLOW).",
    registry=REGISTRY,
)

# Labelled series that a dashboard or alert divides by must exist before their first event,
# or a ratio shows "no data" instead of 0.
for _result in CACHE_RESULTS:
    CACHE_REQUESTS.labels(_result)
for _result in JWKS_RESULTS:
    JWKS_REFRESHES.labels(_result)
for _status in TENANT_STATUSES:
    TENANTS.labels(_status)
for _component in REDIS_COMPONENTS:
    REDIS_DEGRADED.labels(_component)


class TenantLabels:
    """Bounds the `tenant` label: the first `limit` distinct tenants keep their slug.

    Lookups of a tenant already seen take no lock (a set membership test is atomic under the
    GIL); only admitting a new tenant locks, so the bound holds across threads.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, slug: str) -> str:
        if slug in self._seen:
            return slug
        with self._lock:
            if slug in self._seen:
                return slug
            if len(self._seen) < self.limit:
                self._seen.add(slug)
                return slug
        return OTHER_TENANT


_tenant_labels = TenantLabels(1000)


def configure(max_tenants: int) -> None:
    """Apply METRICS_MAX_TENANTS; tenants already admitted keep their label."""
    global _tenant_labels
    if max_tenants != _tenant_labels.limit:
        _tenant_labels = TenantLabels(max_tenants)


def tenant_label(slug: str) -> str:
    """The `tenant` label value for `slug`: the slug itself, or `_other` past the bound."""
    return _tenant_labels(slug)


class _Series:
    """Labelled series by label values, looked up once: `labels()` validates and locks on
    every call, which costs more than the increment itself on the request path. Bounded;
    past `limit` distinct label sets it falls back to `labels()`."""

    def __init__(self, metric: Counter | Histogram, limit: int = 10_000) -> None:
        self.metric = metric
        self.limit = limit
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self.metric.labels(*values)
            if len(self._children) < self.limit:
                self._children[values] = child
        return child


_http_requests = _Series(HTTP_REQUESTS)
_http_duration = _Series(HTTP_DURATION)
_tenant_requests = _Series(TENANT_REQUESTS)
_cache_requests = _Series(CACHE_REQUESTS)


def record_tenant_request(tenant: str, status_code: int) -> None:
    _tenant_requests(tenant_label(tenant), f"{status_code // 100}xx").inc()


def record_rate_limit_rejection(tenant: str) -> None:
    RATE_LIMIT_REJECTIONS.labels(tenant_label(tenant)).inc()


def record_cache(result: Literal["hit", "miss", "error"]) -> None:
    _cache_requests(result).inc()


def record_jwks_refresh(result: Literal["success", "error"]) -> None:
    JWKS_REFRESHES.labels(result).inc()


def observe_provisioning(seconds: float) -> None:
    PROVISIONING_SECONDS.observe(seconds)


def set_tenant_counts(counts: dict[str, int]) -> None:
    """Replace the tenants-by-status gauge; statuses of the contract absent from `counts` are 0."""
    TENANTS.clear()
    for status in TENANT_STATUSES:
        TENANTS.labels(status).set(0)
    for status, count in counts.items():
        TENANTS.labels(status).set(count)


def set_database_up(up: bool) -> None:
    DATABASE_UP.set(1 if up else 0)


def set_redis_degraded(degraded: dict[RedisComponent, bool]) -> None:
    for component, is_degraded in degraded.items():
        REDIS_DEGRADED.labels(component).set(1 if is_degraded else 0)


def _record_http(info: Info) -> None:
    _http_requests(info.modified_handler, info.method, info.modified_status).inc()
    _http_duration(info.modified_handler, info.method).observe(info.modified_duration)


@dataclass(frozen=True, slots=True)
class _Template:
    """One route as the handler label sees it: its template, its pattern and its methods.

    `regex` is None for routes that are not plain HTTP routes (mounts), which are asked to
    match themselves."""

    path_format: str
    regex: re.Pattern[str] | None
    methods: frozenset[str] | None
    context: RouteContext


def _template(context: RouteContext) -> _Template:
    plain = isinstance(context.original_route, APIRoute | Route)
    regex = getattr(context, "path_regex", None) if plain else None
    methods = context.methods
    return _Template(
        str(context.path_format),
        regex,
        frozenset(methods) if methods else None,
        context,
    )


class RouteTemplateMiddleware(PrometheusInstrumentatorMiddleware):
    """The instrumentator's middleware, with handler labels resolved on FastAPI's routes.

    The stock resolver reads `route.path` on each top-level route, which FastAPI's included
    routers no longer have (AttributeError on every request). `iter_route_contexts` is
    FastAPI's own flattening of included routers, with the full template as `path_format`;
    plain routes are matched on their compiled pattern directly, which costs a regex match
    each instead of a full route match (a child scope, converted parameters) each.
    """

    _routes: list[_Template]
    _routes_key: int = -1

    def _get_handler(self, request: Request) -> tuple[str, bool]:
        app_routes = request.app.routes
        # Routes are fixed once the app serves; rebuild only if the top level changed.
        if len(app_routes) != self._routes_key:
            self._routes = [_template(ctx) for ctx in iter_route_contexts(app_routes)]
            self._routes_key = len(app_routes)
        scope = request.scope
        path = get_route_path(scope)
        method = scope["method"]
        partial: str | None = None
        for route in self._routes:
            if route.regex is None:
                match, _ = route.context.matches(scope)
            elif route.regex.match(path) is None:
                continue
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


@lru_cache(maxsize=1)
def tenant_migrations_head() -> str | None:
    """The head revision of `migrations/tenant`, or None where that tree is absent."""
    directory = Path(__file__).resolve().parents[2] / "migrations" / "tenant"
    if not (directory / "versions").is_dir():
        return None
    try:
        from alembic.script import ScriptDirectory

        return ScriptDirectory(str(directory)).get_current_head()
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
    if head is None:
        query = text("SELECT status, count(*), 0 FROM platform.tenants GROUP BY status")
        params: dict[str, str] = {}
    else:
        query = text(
            "SELECT status, count(*), count(*) FILTER (WHERE schema_version IS DISTINCT FROM :head)"
            " FROM platform.tenants GROUP BY status"
        )
        params = {"head": head}
    try:
        async with asyncio.timeout(SCRAPE_QUERY_TIMEOUT_SECONDS):
            async with engine.connect() as conn:
                rows = (await conn.execute(query, params)).all()
    except ProgrammingError as exc:  # reached PostgreSQL; the registry is not there (yet)
        set_database_up(True)
        logger.debug("metrics: tenant registry not readable: %s", type(exc.orig).__name__)
        return
    except Exception as exc:  # unreachable, timed out, refused: never break the scrape
        set_database_up(False)
        logger.warning("metrics: database unreachable at scrape: %s", type(exc).__name__)
        return
    set_database_up(True)
    set_tenant_counts({str(status): int(count) for status, count, _ in rows})
    if head is not None:
        TENANTS_BEHIND_HEAD.set(sum(int(behind) for _, _, behind in rows))


async def render(engine: AsyncEngine) -> bytes:
    """Collect the scrape-time metrics, then the whole registry in the text format."""
    collect_pool(engine)
    await collect_tenants(engine, tenant_migrations_head())
    return generate_latest(REGISTRY)
