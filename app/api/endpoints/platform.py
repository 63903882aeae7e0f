"""Platform endpoints: liveness, readiness and metrics (no tenant token)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

from fastapi import APIRouter, Request, Security
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from pydantic import BaseModel
from sqlalchemy import text

from app import metrics
from app.api import instrumentation
from app.api.dependencies.auth import bearer_token
from app.api.problems import problem_response
from app.core.config import Settings
from app.services.redis_health import redis_degraded

logger = logging.getLogger("tessera.health")

router = APIRouter(tags=["platform"])

READINESS_TIMEOUT_SECONDS = 2.0


class Health(BaseModel):
    status: Literal["ok"]


class ReadinessChecks(BaseModel):
    database: Literal["ok", "error"]
    redis: Literal["ok", "degraded"]


class Readiness(BaseModel):
    status: Literal["ok", "error"]
    checks: ReadinessChecks


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: PostgreSQL reachable (Redis is optional)",
    description=(
        "`redis` is `degraded` while the cache or the rate limiter cannot use Redis: a node "
        "does not answer, a Cluster is not `cluster_state:ok`, or the latest Redis call of "
        "either failed. `tessera_redis_degraded{component}` says which."
    ),
    responses={503: {"model": Readiness, "description": "PostgreSQL is unreachable"}},
)
async def readyz(request: Request) -> JSONResponse:
    database_ok, redis_degraded = await asyncio.gather(
        _check_database(request), _check_redis(request)
    )
    body = Readiness(
        status="ok" if database_ok else "error",
        checks=ReadinessChecks(
            database="ok" if database_ok else "error",
            redis="degraded" if any(redis_degraded.values()) else "ok",
        ),
    )
    metrics.set_database_up(database_ok)
    return JSONResponse(body.model_dump(), status_code=200 if database_ok else 503)


_PROBLEM: dict[str, dict[str, object]] = {"application/problem+json": {}}
# Declared only when METRICS_TOKEN is set, so the document shows the security /metrics has.
# auto_error=False: the answer to a missing token is problem+json, not FastAPI's default 403.
metrics_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="metricsToken",
    description="`Authorization: Bearer <METRICS_TOKEN>`.",
)


def metrics_router(settings: Settings) -> APIRouter:
    """GET /metrics, as the settings make it: behind `Authorization: Bearer <METRICS_TOKEN>`
    when METRICS_TOKEN is set (and so documented), open otherwise."""
    expected = settings.metrics_token
    responses: dict[int | str, dict[str, Any]] = {
        200: {"content": {"text/plain": {}}, "description": "Metrics in the text format"},
    }
    dependencies = []
    if expected:
        responses[401] = {"content": _PROBLEM, "description": "No token, or not METRICS_TOKEN"}
        dependencies.append(Security(metrics_bearer))
    router = APIRouter(tags=["platform"])

    @router.get(
        "/metrics",
        summary="Prometheus metrics (text exposition format)",
        description=(
            "The HTTP and `tessera_*` metrics. When `METRICS_TOKEN` is set, the request must "
            "carry `Authorization: Bearer <METRICS_TOKEN>`."
        ),
        response_class=Response,
        responses=responses,
        dependencies=dependencies,
    )
    async def metrics_endpoint(request: Request) -> Response:
        if expected:
            presented = bearer_token(request.headers.get("authorization", ""))
            if presented is None:
                return problem_response(
                    401,
                    "not_authenticated",
                    "This endpoint requires Authorization: Bearer <METRICS_TOKEN>.",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            if not instrumentation.token_matches(expected, presented):
                return problem_response(
                    401,
                    "invalid_token",
                    "The metrics token is not valid.",
                    headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
                )
        await _check_redis(request)  # tessera_redis_degraded as of this scrape
        body = await instrumentation.render(request.app.state.engine)
        return Response(body, media_type=metrics.CONTENT_TYPE)

    return router


async def _check_database(request: Request) -> bool:
    try:
        async with asyncio.timeout(READINESS_TIMEOUT_SECONDS):
            async with request.app.state.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        return True
    except Exception as exc:
        logger.warning("readiness: database check failed: %s", type(exc).__name__)
        return False


async def _check_redis(request: Request) -> dict[metrics.RedisComponent, bool]:
    state = request.app.state
    return await redis_degraded(
        state.redis, state.cache, state.rate_limiter, timeout=READINESS_TIMEOUT_SECONDS
    )
