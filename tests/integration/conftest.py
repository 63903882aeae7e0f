"""Fixtures for the tenant API: callers of a fresh tenant, and of a second one."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.db.repositories.tenants import TenantRecord
from tests.factories import make_tenant

Headers = dict[str, str]


@pytest.fixture
def auth(make_token: Callable[..., str]) -> Callable[..., Headers]:
    """`auth(tenant, sub="alice", scopes=...)`: the Authorization header of a tenant's caller."""

    def make(
        tenant: TenantRecord, sub: str = "alice", scopes: str = "api:read api:write"
    ) -> Headers:
        return {"Authorization": f"Bearer {make_token(tenant=tenant.slug, scopes=scopes, sub=sub)}"}

    return make


@pytest.fixture
def headers(tenant: TenantRecord, auth: Callable[..., Headers]) -> Headers:
    return auth(tenant)


@pytest.fixture
async def other_tenant(engine: AsyncEngine, settings: Settings) -> TenantRecord:
    return await make_tenant(engine, settings)
