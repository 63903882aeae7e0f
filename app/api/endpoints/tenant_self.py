"""Tenant API: the caller's own tenant, straight from the resolved tenant (no query)."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.admission import CurrentTenant
from app.api.errors import TENANT_ERRORS, responses
from app.schemas.tenants import TenantSelf

router = APIRouter(prefix="/v1/tenant", tags=["tenant"], responses=responses(*TENANT_ERRORS))


@router.get("", response_model=TenantSelf, summary="The caller's tenant")
async def get_own_tenant(tenant: CurrentTenant) -> TenantSelf:
    return TenantSelf.model_validate(tenant, from_attributes=True)
