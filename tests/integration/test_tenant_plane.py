"""The tenant plane over HTTP: tenant resolution, status, scopes, and the admin lifecycle's
effect on tenant tokens (CONTRACT sections 3, 7 and 8)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.repositories.tenants import TenantRecord
from app.services import tenant_lifecycle
from app.services import tenants as service
from tests.conftest import MakeToken
from tests.integration.test_platform import assert_problem

Headers = dict[str, str]


@pytest.fixture
def admin(make_token: MakeToken) -> Headers:
    return {"Authorization": "Bearer " + make_token(tenant=None, scopes="platform:admin")}


async def poll_status(
    client: httpx.AsyncClient, headers: Headers, expected: int, within: float
) -> float:
    """Seconds until GET /v1/tenant answers `expected`; fails after `within` seconds."""
    started = time.monotonic()
    while True:
        response = await client.get("/v1/tenant", headers=headers)
        elapsed = time.monotonic() - started
        if response.status_code == expected:
            return elapsed
        assert elapsed < within, f"still {response.status_code} after {elapsed:.2f} s"
        await asyncio.sleep(0.05)


async def test_get_v1_tenant_is_the_callers_tenant_only(
    client: httpx.AsyncClient, tenant: TenantRecord, headers: Headers
) -> None:
    response = await client.get("/v1/tenant", headers=headers)
    assert response.status_code == 200
    assert response.json() == {
        "slug": tenant.slug,
        "name": tenant.name,
        "plan": tenant.plan,
        "status": "active",
        "rate_limit": "600/minute",
    }


async def test_suspend_gives_403_within_1s_and_resume_restores_data(
    client: httpx.AsyncClient, tenant: TenantRecord, headers: Headers, admin: Headers
) -> None:
    created = await client.post("/v1/projects", json={"name": "keep me"}, headers=headers)
    assert created.status_code == 201
    await client.get("/v1/tenant", headers=headers)  # warm the registry cache

    await client.post(f"/admin/v1/tenants/{tenant.slug}/suspend", headers=admin)
    assert await poll_status(client, headers, 403, within=1.0) <= 1.0
    assert_problem(await client.get("/v1/tenant", headers=headers), 403, "tenant_suspended")
    assert_problem(
        await client.post("/v1/projects", json={"name": "no"}, headers=headers),
        403,
        "tenant_suspended",
    )

    await client.post(f"/admin/v1/tenants/{tenant.slug}/resume", headers=admin)
    await poll_status(client, headers, 200, within=1.0)
    again = await client.get(f"/v1/projects/{created.json()['id']}", headers=headers)
    assert again.status_code == 200 and again.json()["name"] == "keep me"


async def test_suspend_reaches_a_second_replica_within_1s(
    client: httpx.AsyncClient,
    second_client: httpx.AsyncClient,
    tenant: TenantRecord,
    headers: Headers,
    admin: Headers,
) -> None:
    assert (await second_client.get("/v1/tenant", headers=headers)).status_code == 200
    await client.post(f"/admin/v1/tenants/{tenant.slug}/suspend", headers=admin)
    assert await poll_status(second_client, headers, 403, within=1.0) <= 1.0


async def test_deleted_tenant_tokens_get_tenant_not_found(
    client: httpx.AsyncClient, tenant: TenantRecord, headers: Headers, admin: Headers
) -> None:
    await client.post(f"/admin/v1/tenants/{tenant.slug}/suspend", headers=admin)
    assert (
        await client.delete(f"/admin/v1/tenants/{tenant.slug}", headers=admin)
    ).status_code == 204
    await asyncio.sleep(0)
    started = time.monotonic()
    while True:
        response = await client.get("/v1/tenant", headers=headers)
        if response.json().get("code") == "tenant_not_found":
            break
        assert time.monotonic() - started < 1.0
        await asyncio.sleep(0.05)
    assert_problem(response, 403, "tenant_not_found")


async def test_admin_token_on_tenant_api_is_tenant_not_found(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    assert_problem(await client.get("/v1/projects", headers=admin), 403, "tenant_not_found")


async def test_token_for_unknown_tenant_is_tenant_not_found(
    client: httpx.AsyncClient, make_token: MakeToken
) -> None:
    token = make_token(tenant="never-created", scopes="api:read")
    response = await client.get("/v1/tenant", headers={"Authorization": f"Bearer {token}"})
    assert_problem(response, 403, "tenant_not_found")


async def test_read_scope_cannot_write_and_no_scope_cannot_read(
    client: httpx.AsyncClient, tenant: TenantRecord, auth: Callable[..., Headers]
) -> None:
    reader = auth(tenant, scopes="api:read")
    assert (await client.get("/v1/projects", headers=reader)).status_code == 200
    response = await client.post("/v1/projects", json={"name": "x"}, headers=reader)
    assert_problem(response, 403, "insufficient_scope")
    assert response.headers["WWW-Authenticate"] == 'Bearer error="insufficient_scope"'
    writer = auth(tenant, scopes="api:write")
    assert (await client.get("/v1/projects", headers=writer)).status_code == 200
    nothing = auth(tenant, scopes="profile")
    assert_problem(await client.get("/v1/projects", headers=nothing), 403, "insufficient_scope")


async def test_no_token_and_bad_token_on_tenant_api(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/projects")
    assert_problem(response, 401, "not_authenticated")
    assert response.headers["WWW-Authenticate"] == "Bearer"
    response = await client.get("/v1/projects", headers={"Authorization": "Bearer abc.def.ghi"})
    assert_problem(response, 401, "invalid_token")
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


async def test_tenant_deleted_through_another_replica_is_tenant_not_found_not_500(
    client: httpx.AsyncClient, tenant: TenantRecord, headers: Headers, engine: AsyncEngine
) -> None:
    assert (await client.get("/v1/tenant", headers=headers)).status_code == 200  # cached here
    # Another replica suspends and deletes it; this one still holds the tenant as active.
    await service.update_tenant(engine, tenant.slug, status="suspended")
    await tenant_lifecycle.delete_tenant(engine, tenant.slug, grace_seconds=0)
    response = await client.post("/v1/projects", json={"name": "late"}, headers=headers)
    assert_problem(response, 403, "tenant_not_found")
