"""The application factory: settings, lifespan resources, middleware, routers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI

from app import metrics
from app.api.admission import get_admission
from app.api.cached_reads import CachedReadsFirst
from app.api.endpoints import (
    admin_audit,
    audit,
    plans,
    platform,
    projects,
    tasks,
    tenant_archive,
    tenant_self,
    tenants,
    usage,
)
from app.api.instrumentation import instrument
from app.api.middleware import RequestContextMiddleware
from app.api.problems import install_error_handlers
from app.api.writes_first import DeclaredWritesFirst
from app.auth.tokens import TokenVerifier
from app.core.config import Settings, get_settings
from app.core.logging import configure_logging
from app.db.engine import build_engine
from app.db.pool import TenantConnections
from app.redis.client import build_redis
from app.runtime import tuned_for_serving
from app.services.cache import TenantCache
from app.services.rate_limiter import TenantRateLimiter
from app.services.request_usage import RequestTally
from app.services.tenants import TenantRegistry
from app.services.usage import UsageRefresher


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.engine = build_engine(settings)
        app.state.connections = TenantConnections.for_settings(
            app.state.engine, settings, on_busy=metrics.record_tenant_busy_rejection
        )
        app.state.redis = build_redis(settings)
        app.state.token_verifier = TokenVerifier(settings)  # fetches keys lazily, never at start
        app.state.tenant_registry = TenantRegistry(app.state.engine, settings)
        app.state.rate_limiter = TenantRateLimiter(
            app.state.redis,
            default_limit=settings.rate_limit_default,
            fail_open=settings.rate_limit_fail_open,
            timeout_seconds=settings.redis_timeout_seconds,
            on_rejection=metrics.record_rate_limit_rejection,
        )
        app.state.cache = TenantCache(
            app.state.redis,
            ttl_seconds=settings.cache_ttl_seconds,
            timeout_seconds=settings.redis_timeout_seconds,
            on_result=metrics.record_cache,
        )
        app.state.tenant_registry.start()  # listens in the background; never waits here
        tally.start(app.state.redis, timeout=settings.redis_timeout_seconds)
        app.state.usage_refresher = UsageRefresher(app.state.engine, settings.usage_refresh_seconds)
        app.state.usage_refresher.start()
        try:
            with tuned_for_serving():
                yield
        except asyncio.CancelledError:
            # uvicorn's forced exit (a second Ctrl-C) sends no shutdown event and cancels
            # this task instead: the cleanup below still runs in full, and the stop is a
            # stop, not a failure with a traceback.
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
        finally:
            await app.state.usage_refresher.aclose()
            await tally.aclose()  # what was counted and not yet flushed goes to Redis
            await app.state.tenant_registry.aclose()
            await app.state.token_verifier.aclose()
            await app.state.redis.aclose()
            await app.state.connections.aclose()
            await app.state.engine.dispose()

    app = FastAPI(
        title="Tessera",
        version="0.1.0",
        summary="Multi-tenant SaaS backend: one PostgreSQL schema per tenant.",
        lifespan=lifespan,
        # Tessera's telemetry is Prometheus (app/metrics.py) and JSON logs. FastAPI's
        # native OpenTelemetry would otherwise look for global providers on every request
        # (about 20 µs each, docs/profile.md) to find none.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    # Requests by tenant and status class, counted by the request middleware, kept in Redis.
    app.state.request_tally = tally = RequestTally()
    install_error_handlers(app)
    app.include_router(platform.router)
    app.include_router(platform.metrics_router(settings))
    app.include_router(tenants.router)
    app.include_router(admin_audit.router)
    app.include_router(tenant_archive.router)
    app.include_router(plans.router)
    app.include_router(usage.router)
    app.include_router(tenant_api_router())
    # Inside the request middleware: what the fast paths answer still gets its request id,
    # access log line and metrics.
    app.add_middleware(DeclaredWritesFirst)
    app.add_middleware(CachedReadsFirst)
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.max_body_bytes,
        body_limits={tenant_archive.IMPORT_PATH: settings.archive_max_bytes},
        on_tenant=tally.record,
    )
    # Added last, so outermost: it also counts the 413s the request middleware answers early.
    metrics.configure(settings.metrics_max_tenants)
    instrument(app)
    return app


def tenant_api_router() -> APIRouter:
    """Every /v1 route: admission (principal, tenant, rate limit) resolves before the
    endpoint's pinned connection is opened, so a refused request never takes a database
    connection."""
    router = APIRouter(dependencies=[Depends(get_admission)])
    for resource in (tenant_self.router, projects.router, tasks.router, audit.router):
        router.include_router(resource)
    return router


def __getattr__(name: str) -> FastAPI:
    # `uvicorn app.main:app` builds the app on first access, so importing this module
    # (tests, the CLI) never reads the environment by itself.
    if name == "app":
        application = create_app()
        globals()["app"] = application
        return application
    raise AttributeError(name)
