"""Admin API: tenant lifecycle over HTTP with real admin tokens (CONTRACT section 7)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.repositories.tenants import TenantRecord
from tests.conftest import MakeToken
from tests.integration.test_platform import assert_problem


async def create(
    client: httpx.AsyncClient, admin: dict[str, str], slug: str, **body: object
) -> httpx.Response:
    return await client.post(
        "/admin/v1/tenants", json={"slug": slug, "name": "Name", **body}, headers=admin
    )


async def test_create_returns_201_with_location_and_a_migrated_schema(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    unique_slug: Callable[[str], str],
    engine: AsyncEngine,
) -> None:
    slug = unique_slug("new")
    response = await create(client, admin, slug, plan="enterprise", rate_limit="10/second")
    assert response.status_code == 201, response.text
    assert response.headers["Location"] == f"/admin/v1/tenants/{slug}"
    body = response.json()
    assert set(body) == {
        "id",
        "slug",
        "name",
        "plan",
        "status",
        "rate_limit",
        "schema",
        "schema_version",
        "created_at",
        "updated_at",
        "purge_after",
    }
    assert body["purge_after"] is None
    assert (body["slug"], body["plan"], body["status"]) == (slug, "enterprise", "active")
    assert body["rate_limit"] == "10/second"
    assert body["schema"] == "tenant_" + slug.replace("-", "_")
    async with engine.connect() as conn:
        version = await conn.scalar(
            text(f'SELECT version_num FROM "{body["schema"]}".alembic_version')
        )
    assert version == body["schema_version"]


async def test_default_rate_limit_is_shown_when_the_tenant_has_none(
    client: httpx.AsyncClient, admin: dict[str, str], unique_slug: Callable[[str], str]
) -> None:
    response = await create(client, admin, unique_slug("dflt"))
    assert response.json()["rate_limit"] == "600/minute"
    assert response.json()["plan"] == "free"


@pytest.mark.parametrize(
    "slug",
    [
        "admin",
        "public",
        "api",
        "www",
        "system",
        "root",
        "postgres",
        "template",
        "default",
        "pgsql",
        "ab",
        "a" * 41,
        "a" * 64,
        "Acme",
        "1abc",
        "a--b",
        "a-",
        "a_b",
        "x'; DROP--",
        "ünïcode",
        "acme\n",
        "tab\tx",
        "acme\u0000x",
    ],
)
async def test_bad_slug_is_422(client: httpx.AsyncClient, admin: dict[str, str], slug: str) -> None:
    body = assert_problem(await create(client, admin, slug), 422, "validation_error")
    assert body["errors"][0]["loc"][:2] == ["body", "slug"]


async def test_taken_slug_is_409_tenant_exists(
    client: httpx.AsyncClient, admin: dict[str, str], unique_slug: Callable[[str], str]
) -> None:
    slug = unique_slug("dup")
    assert (await create(client, admin, slug)).status_code == 201
    assert_problem(await create(client, admin, slug), 409, "tenant_exists")


async def test_concurrent_creates_of_one_slug_give_one_201_and_one_409(
    client: httpx.AsyncClient, admin: dict[str, str], unique_slug: Callable[[str], str]
) -> None:
    slug = unique_slug("race")
    responses = await asyncio.gather(create(client, admin, slug), create(client, admin, slug))
    assert sorted(r.status_code for r in responses) == [201, 409]


async def test_bad_plan_rate_limit_and_unknown_fields_are_422(
    client: httpx.AsyncClient, admin: dict[str, str], unique_slug: Callable[[str], str]
) -> None:
    assert_problem(
        await create(client, admin, unique_slug("p"), plan="Gold!"), 422, "validation_error"
    )
    assert_problem(await create(client, admin, unique_slug("p"), plan="gold"), 422, "unknown_plan")
    assert_problem(
        await create(client, admin, unique_slug("r"), rate_limit="lots"), 422, "validation_error"
    )
    assert_problem(
        await create(client, admin, unique_slug("u"), color="red"), 422, "validation_error"
    )


@pytest.mark.parametrize("rate_limit", ["0/minute", "10 per minute", "10/fortnight", "1/second;"])
async def test_rate_limit_outside_the_documented_form_is_422(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    unique_slug: Callable[[str], str],
    rate_limit: str,
) -> None:
    response = await create(client, admin, unique_slug("r"), rate_limit=rate_limit)
    assert_problem(response, 422, "validation_error")


@pytest.mark.parametrize("field", ["name", "plan"])
async def test_patch_with_null_name_or_plan_is_422_and_changes_nothing(
    client: httpx.AsyncClient, admin: dict[str, str], tenant: TenantRecord, field: str
) -> None:
    url = f"/admin/v1/tenants/{tenant.slug}"
    body = assert_problem(
        await client.patch(url, json={field: None}, headers=admin), 422, "validation_error"
    )
    assert [(e["loc"], e["type"]) for e in body["errors"]] == [(["body", field], "value_error")]
    after = (await client.get(url, headers=admin)).json()
    assert (after["name"], after["plan"]) == (tenant.name, tenant.plan)


async def test_malformed_json_is_400_and_oversize_body_is_413(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    headers = {**admin, "Content-Type": "application/json"}
    assert_problem(
        await client.post("/admin/v1/tenants", content=b'{"slug": ', headers=headers),
        400,
        "malformed_json",
    )
    big = b'{"slug": "' + b"a" * (1024 * 1024 + 10) + b'"}'
    assert_problem(
        await client.post("/admin/v1/tenants", content=big, headers=headers),
        413,
        "payload_too_large",
    )

    async def chunks() -> object:  # no Content-Length: the limit applies while streaming
        for _ in range(20):
            yield b" " * 65536

    assert_problem(
        await client.post("/admin/v1/tenants", content=chunks(), headers=headers),  # type: ignore[arg-type]
        413,
        "payload_too_large",
    )


async def test_get_list_patch_suspend_resume_delete(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    unique_slug: Callable[[str], str],
    engine: AsyncEngine,
) -> None:
    slug = unique_slug("life")
    created = (await create(client, admin, slug)).json()
    got = await client.get(f"/admin/v1/tenants/{slug}", headers=admin)
    assert got.status_code == 200 and got.json()["id"] == created["id"]
    assert_problem(
        await client.get("/admin/v1/tenants/no-such-tenant", headers=admin),
        404,
        "tenant_not_found",
    )

    patched = await client.patch(
        f"/admin/v1/tenants/{slug}",
        json={"name": "Renamed", "plan": "pro", "rate_limit": "5/minute"},
        headers=admin,
    )
    assert patched.status_code == 200
    assert (patched.json()["name"], patched.json()["plan"], patched.json()["rate_limit"]) == (
        "Renamed",
        "pro",
        "5/minute",
    )
    reset = await client.patch(
        f"/admin/v1/tenants/{slug}", json={"rate_limit": None}, headers=admin
    )
    assert reset.json()["rate_limit"] == "600/minute"
    assert_problem(
        await client.patch(f"/admin/v1/tenants/{slug}", json={"status": "x"}, headers=admin),
        422,
        "validation_error",
    )

    assert_problem(
        await client.delete(f"/admin/v1/tenants/{slug}", headers=admin), 409, "tenant_active"
    )
    suspended = await client.post(f"/admin/v1/tenants/{slug}/suspend", headers=admin)
    assert suspended.json()["status"] == "suspended"
    listed = await client.get("/admin/v1/tenants?status=suspended&limit=100", headers=admin)
    assert slug in [t["slug"] for t in listed.json()["items"]]
    resumed = await client.post(f"/admin/v1/tenants/{slug}/resume", headers=admin)
    assert resumed.json()["status"] == "active"
    await client.post(f"/admin/v1/tenants/{slug}/suspend", headers=admin)
    deleted = await client.delete(f"/admin/v1/tenants/{slug}", headers=admin)
    assert deleted.status_code == 204 and deleted.content == b""
    assert_problem(
        await client.get(f"/admin/v1/tenants/{slug}", headers=admin), 404, "tenant_not_found"
    )
    async with engine.connect() as conn:
        assert not await conn.scalar(
            text("SELECT 1 FROM pg_namespace WHERE nspname = :s"), {"s": created["schema"]}
        )


async def test_list_paginates_newest_first_without_duplicates(
    client: httpx.AsyncClient, admin: dict[str, str], unique_slug: Callable[[str], str]
) -> None:
    for _ in range(5):
        await create(client, admin, unique_slug("page"))
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/admin/v1/tenants", params=params, headers=admin)).json()
        seen += [t["slug"] for t in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) >= 5
    assert_problem(
        await client.get("/admin/v1/tenants?cursor=garbage", headers=admin),
        422,
        "invalid_cursor",
    )
    assert_problem(
        await client.get("/admin/v1/tenants?limit=0", headers=admin), 422, "validation_error"
    )


async def test_tenant_token_cannot_use_the_admin_api(
    client: httpx.AsyncClient, make_token: MakeToken
) -> None:
    tenant_token = make_token(tenant="acme", scopes="api:read api:write platform:admin")
    response = await client.get(
        "/admin/v1/tenants", headers={"Authorization": f"Bearer {tenant_token}"}
    )
    assert_problem(response, 403, "insufficient_scope")
    no_scope = make_token(tenant=None, scopes="api:read")
    response = await client.get(
        "/admin/v1/tenants", headers={"Authorization": f"Bearer {no_scope}"}
    )
    assert_problem(response, 403, "insufficient_scope")
    assert_problem(await client.get("/admin/v1/tenants"), 401, "not_authenticated")


async def test_move_on_plain_postgresql_is_409_not_distributed(
    client: httpx.AsyncClient, admin: dict[str, str], tenant: TenantRecord
) -> None:
    response = await client.post(
        f"/admin/v1/tenants/{tenant.slug}/move", json={"node": "127.0.0.1:5432"}, headers=admin
    )
    assert_problem(response, 409, "not_distributed")
    # Still served from where it was.
    again = await client.get(f"/admin/v1/tenants/{tenant.slug}", headers=admin)
    assert again.status_code == 200


async def test_move_of_an_unknown_tenant_is_404(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    response = await client.post(
        "/admin/v1/tenants/no-such-tenant/move", json={"node": "127.0.0.1:5432"}, headers=admin
    )
    assert_problem(response, 404, "tenant_not_found")


@pytest.mark.parametrize(
    "body",
    [
        {"node": "127.0.0.1"},
        {"node": "127.0.0.1:0"},
        {"node": "127.0.0.1:70000"},
        {"node": "host name:5432"},
        {"node": ":5432"},
        {"node": 5432},
        {},
        {"node": "127.0.0.1:5432", "mode": "fast"},
    ],
)
async def test_move_to_a_malformed_node_is_422(
    client: httpx.AsyncClient, admin: dict[str, str], tenant: TenantRecord, body: object
) -> None:
    response = await client.post(f"/admin/v1/tenants/{tenant.slug}/move", json=body, headers=admin)
    problem = assert_problem(response, 422, "validation_error")
    assert problem["errors"]


async def test_move_needs_the_admin_scope(
    client: httpx.AsyncClient, tenant: TenantRecord, headers: dict[str, str]
) -> None:
    response = await client.post(
        f"/admin/v1/tenants/{tenant.slug}/move", json={"node": "127.0.0.1:5432"}, headers=headers
    )
    assert_problem(response, 403, "insufficient_scope")
