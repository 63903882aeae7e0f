"""Admin API: the admin audit log, every admin action on a tenant, newest first."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from app.api.dependencies.auth import require_admin
from app.api.dependencies.db import EngineDep
from app.api.dependencies.pagination import PageCursor, PageLimit
from app.api.errors import ADMIN_ERRORS, responses
from app.core.slugs import SLUG_MAX, SLUG_MIN, SLUG_PATTERN
from app.schemas.admin_audit import AdminAuditEventOut
from app.schemas.common import Page, without_null
from app.services import admin_audit as service
from app.services.pagination import DEFAULT_LIMIT

router = APIRouter(
    prefix="/admin/v1/audit-events",
    tags=["admin: audit"],
    dependencies=[Depends(require_admin)],
    responses=responses(*ADMIN_ERRORS),
)


@router.get(
    "",
    response_model=Page[AdminAuditEventOut],
    summary="Admin actions (create, update, suspend, ..., purge), newest first",
    description=(
        "Every admin action on a tenant, from the admin API or the `tessera` command: who "
        "(`actor`), what (`action`, `changes`), which tenant, and the request's id. Events "
        "outlive the tenants they name: `tenant=` matches by slug, so it also finds the "
        "events of a purged tenant (and of an earlier tenant that had the same slug)."
    ),
)
async def list_admin_audit_events(
    engine: EngineDep,
    tenant: Annotated[
        str | None,
        Query(
            min_length=SLUG_MIN,
            max_length=SLUG_MAX,
            pattern=SLUG_PATTERN,
            description="Only the events of the tenant with this slug",
            json_schema_extra=without_null(),
        ),
    ] = None,
    limit: PageLimit = DEFAULT_LIMIT,
    cursor: PageCursor = None,
) -> Page[AdminAuditEventOut]:
    events, next_cursor = await service.list_events(
        engine, tenant_slug=tenant, limit=limit, cursor=cursor
    )
    return Page[AdminAuditEventOut](
        items=[AdminAuditEventOut.model_validate(e) for e in events], next_cursor=next_cursor
    )
