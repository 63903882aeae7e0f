"""Platform endpoints: liveness and readiness (no token)."""

from __future__ import annotations

import asyncio
import logging
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text

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
    responses={503: {"model": Readiness, "description": "PostgreSQL is unreachable"}},
)
async def readyz(request: Request) -> JSONResponse:
    database_ok, redis_ok = await asyncio.gather(_check_database(request), _check_redis(request))
    body = Readiness(
        status="ok" if database_ok else "error",
        checks=ReadinessChecks(
            database="ok" if database_ok else "error", redis="ok" if redis_ok else "degraded"
        ),
    )
    return JSONResponse(body.model_dump(), status_code=200 if database_ok else 503)


async def _check_database(request: Request) -> bool:
    try:
        async with asyncio.timeout(READINESS_TIMEOUT_SECONDS):
            async with request.app.state.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        return True
    except Exception as exc:
        logger.warning("readiness: database check failed: %s", type(exc).__name__)
        return False


async def _check_redis(request: Request) -> bool:
    try:
        async with asyncio.timeout(READINESS_TIMEOUT_SECONDS):
            await request.app.state.redis.ping()
        return True
    except Exception as exc:
        logger.warning("readiness: redis check failed: %s", type(exc).__name__)
        return False
