"""Assertions and direct reads shared by the tenant API tests."""

from __future__ import annotations

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.repositories.tenants import TenantRecord
from app.db.tenancy import TenantSchema, tenant_transaction


async def count_rows(engine: AsyncEngine, tenant: TenantRecord, table: str) -> int:
    """Rows in one of the tenant's tables, read through the same pinning as a request."""
    location = TenantSchema(schema=tenant.schema, role=tenant.db_role)
    async with tenant_transaction(engine, location) as conn:
        return int(await conn.scalar(text(f"SELECT count(*) FROM {table}")) or 0)


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    return body
