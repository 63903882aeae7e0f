"""Tenant API: the audit trail of every create, update and delete."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.dependencies.db import TenantWork
from app.api.dependencies.pagination import PageCursor, PageLimit
from app.api.errors import TENANT_ERRORS, responses
from app.schemas.audit import AuditEventOut
from app.schemas.common import Page
from app.services import audit as service
from app.services.pagination import DEFAULT_LIMIT

router = APIRouter(prefix="/v1/audit-events", tags=["audit"], responses=responses(*TENANT_ERRORS))


@router.get("", response_model=Page[AuditEventOut], summary="Audit events, newest first")
async def list_audit_events(
    work: TenantWork,
    limit: PageLimit = DEFAULT_LIMIT,
    cursor: PageCursor = None,
) -> Page[AuditEventOut]:
    events, next_cursor = await service.list_events(work.conn, limit=limit, cursor=cursor)
    return Page[AuditEventOut](
        items=[AuditEventOut.model_validate(e) for e in events], next_cursor=next_cursor
    )
