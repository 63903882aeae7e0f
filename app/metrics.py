"""Prometheus metrics: the HTTP metrics and every `tessera_*` metric of CONTRACT section 9,
with the functions that record them (the HTTP side is app/api/instrumentation.py)."""

from __future__ import annotations

import logging
import threading
from typing import Any, Literal

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
)

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
TENANT_STATUSES = ("active", "suspended", "deleted")
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
TENANT_BUSY_REJECTIONS = Counter(
    "tessera_tenant_busy_rejections_total",
    "Requests answered 429 tenant_busy: the tenant already ran its plan's number of "
    "transactions at once on this replica (fair share of the pool).",
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
REDIS_DEGRADED = Gauge(
    "tessera_redis_degraded",
    "1 while this Redis user cannot use Redis (a node down, a Cluster not ok, or its latest "
    "Redis call failed), else 0; set by /readyz and at scrape time.",
    ("component",),
    registry=REGISTRY,
)
DATABASE_UP = Gauge(
    "tessera_database_up",
    "1 when the last scrape-time or readiness query reached PostgreSQL, else 0.",
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
TENANT_STORAGE = Gauge(
    "tessera_tenant_storage_bytes",
    "Bytes of a tenant's schema as last measured (USAGE_REFRESH_SECONDS); tenants past "
    "METRICS_MAX_TENANTS are summed in _other.",
    ("tenant",),
    registry=REGISTRY,
)
TENANT_QUOTA_USED = Gauge(
    "tessera_tenant_quota_used_ratio",
    "Use of a quota of the tenant's plan (0-1, past 1 when over), as last measured; only "
    "quotas that are set; _other holds the highest of the tenants past METRICS_MAX_TENANTS.",
    ("tenant", "quota"),
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


http_requests = _Series(HTTP_REQUESTS)
http_duration = _Series(HTTP_DURATION)
_tenant_requests = _Series(TENANT_REQUESTS)
_cache_requests = _Series(CACHE_REQUESTS)


def record_tenant_request(tenant: str, status_code: int) -> None:
    _tenant_requests(tenant_label(tenant), f"{status_code // 100}xx").inc()


def record_rate_limit_rejection(tenant: str) -> None:
    RATE_LIMIT_REJECTIONS.labels(tenant_label(tenant)).inc()


def record_tenant_busy_rejection(tenant: str) -> None:
    TENANT_BUSY_REJECTIONS.labels(tenant_label(tenant)).inc()


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


def set_tenant_usage(
    storage: list[tuple[str, int]], quota_ratios: list[tuple[str, str, float]]
) -> None:
    """Replace the usage gauges: (slug, bytes) and (slug, quota, ratio), the largest tenants
    first, so they are the ones that keep their own label."""
    stored: dict[str, float] = {}
    for slug, size in storage:
        label = tenant_label(slug)
        stored[label] = stored.get(label, 0) + size
    ratios: dict[tuple[str, str], float] = {}
    for slug, quota, ratio in quota_ratios:
        key = (tenant_label(slug), quota)
        ratios[key] = max(ratios.get(key, 0.0), ratio)
    TENANT_STORAGE.clear()
    for label, total in stored.items():
        TENANT_STORAGE.labels(label).set(total)
    TENANT_QUOTA_USED.clear()
    for (label, quota), ratio in ratios.items():
        TENANT_QUOTA_USED.labels(label, quota).set(ratio)
