"""Admin API: tenant usage, one tenant's and the fleet's (scope AUTH_ADMIN_SCOPE)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from app.api.dependencies.auth import require_admin
from app.api.dependencies.db import EngineDep
from app.api.dependencies.pagination import PageCursor, PageLimit
from app.api.endpoints.tenants import TenantSlug
from app.api.errors import ADMIN_ERRORS, responses
from app.schemas.common import Page
from app.schemas.usage import KeptUsageOut, QuotaUseOut, RequestsOut, TenantUsageOut
from app.services import usage as service
from app.services.pagination import DEFAULT_LIMIT

router = APIRouter(
    prefix="/admin/v1",
    tags=["admin: usage"],
    dependencies=[Depends(require_admin)],
    responses=responses(*ADMIN_ERRORS),
)


def _kept(kept: service.KeptUsage) -> KeptUsageOut:
    return KeptUsageOut(
        tenant=kept.slug,
        storage_bytes=kept.storage_bytes,
        rows=kept.rows,
        refreshed_at=kept.refreshed_at,
        quotas=[
            QuotaUseOut(quota=use.quota, limit=use.limit, usage=use.usage, percent=use.percent)
            for use in kept.quotas
        ],
    )


@router.get(
    "/tenants/{slug}/usage",
    response_model=TenantUsageOut,
    summary="A tenant's usage: requests by status class, rows, storage, quota use",
    description=(
        "Requests come from counters kept in Redis (flushed by each replica every second); "
        "rows, storage and quota use from the figures measured every USAGE_REFRESH_SECONDS "
        "(as of `refreshed_at`)."
    ),
    responses=responses(404),
)
async def tenant_usage(request: Request, slug: TenantSlug, engine: EngineDep) -> TenantUsageOut:
    found = await service.tenant_usage(engine, request.app.state.request_tally, slug)
    counts = found.requests
    requests = None
    if counts is not None:
        requests = RequestsOut(last_hour=counts.last_hour, last_day=counts.last_day)
    return TenantUsageOut(
        **_kept(found.kept).model_dump(),
        requests=requests,
        last_request_at=None if counts is None else counts.last_request_at,
    )


@router.get(
    "/usage",
    response_model=Page[KeptUsageOut],
    summary="Every measured tenant's usage, largest storage first",
)
async def fleet_usage(
    engine: EngineDep, limit: PageLimit = DEFAULT_LIMIT, cursor: PageCursor = None
) -> Page[KeptUsageOut]:
    items, next_cursor = await service.fleet_page(engine, limit=limit, cursor=cursor)
    return Page[KeptUsageOut](
        items=[_kept(kept) for kept in items],
        next_cursor=next_cursor,
    )
