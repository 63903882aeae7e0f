"""The tenant plane: token → tenant claim → registry → status → scope."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.api.dependencies.auth import Principal, PrincipalDep, check_scopes
from app.core.context import tenant_var
from app.core.errors import Forbidden, TenantNotFoundForToken
from app.services.tenants import Tenant, TenantRegistry

READ_SCOPES = ("api:read", "api:write")
WRITE_SCOPES = ("api:write",)


class TenantSuspended(Forbidden):
    code = "tenant_suspended"


async def get_current_tenant(request: Request, principal: PrincipalDep) -> Tenant:
    """The caller's tenant: it must exist and be active. Checked before scopes, so an admin
    token without a tenant claim gets `tenant_not_found` on the tenant API."""
    if principal.tenant is None:
        raise TenantNotFoundForToken("The token names no tenant.")
    registry: TenantRegistry = request.app.state.tenant_registry
    tenant = await registry.get(principal.tenant)
    if tenant is None:
        raise TenantNotFoundForToken("The token's tenant does not exist.")
    tenant_var.set(tenant.slug)
    if tenant.status == "suspended":
        raise TenantSuspended("This tenant is suspended.")
    method = request.scope["method"]
    check_scopes(principal, *(READ_SCOPES if method in ("GET", "HEAD") else WRITE_SCOPES))
    return tenant


CurrentTenant = Annotated[Tenant, Depends(get_current_tenant)]


def get_actor(principal: PrincipalDep) -> Principal:
    return principal


Actor = Annotated[Principal, Depends(get_actor)]
