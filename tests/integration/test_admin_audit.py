"""The admin audit log: every admin action recorded with its actor, request id, tenant and
changes, in the change's own transaction; `GET /admin/v1/audit-events`."""

from __future__ import annotations

import asyncio
import getpass
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.services import admin_audit, tenant_lifecycle
from app.services import tenants as service
from tests.conftest import MakeToken
from tests.factories import make_tenant
from tests.integration.test_fleet_migration import cli_env
from tests.support import assert_problem, running_app

Headers = dict[str, str]


@pytest.fixture(scope="module")
async def graced(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API with a grace period, so that a delete and a restore can both be recorded."""
    update = {"tenant_purge_grace_seconds": 3600}
    async with running_app(settings.model_copy(update=update)) as (_, client):
        yield client


@pytest.fixture
def operator(make_token: MakeToken) -> Headers:
    """An admin whose `sub` the events must name."""
    token = make_token(tenant=None, scopes="platform:admin", sub="ops-alice")
    return {"Authorization": f"Bearer {token}"}


async def events_of(
    client: httpx.AsyncClient, admin: Headers, slug: str, **params: str
) -> list[dict[str, Any]]:
    response = await client.get(
        "/admin/v1/audit-events", params={"tenant": slug, "limit": "100", **params}, headers=admin
    )
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_every_admin_action_is_recorded_with_actor_request_id_and_changes(
    graced: httpx.AsyncClient,
    operator: Headers,
    unique_slug: Callable[[str], str],
    engine: AsyncEngine,
) -> None:
    slug = unique_slug("aud")
    base = f"/admin/v1/tenants/{slug}"
    calls = [
        ("POST", "/admin/v1/tenants", {"slug": slug, "name": "Before", "plan": "free"}),
        ("PATCH", base, {"name": "After", "plan": "pro"}),
        ("POST", f"{base}/suspend", None),
        ("POST", f"{base}/resume", None),
        ("POST", f"{base}/suspend", None),
        ("DELETE", base, None),
        ("POST", f"{base}/restore", None),
        ("DELETE", base, None),
    ]
    request_ids = []
    for number, (method, url, body) in enumerate(calls):
        request_id = f"audit-{slug}-{number}"
        response = await graced.request(
            method, url, json=body, headers={**operator, "X-Request-ID": request_id}
        )
        assert response.is_success, response.text
        request_ids.append(request_id)
    await tenant_lifecycle.purge_tenant_now(engine, slug)  # the command's path, actor "system"

    events = await events_of(graced, operator, slug)
    assert [e["action"] for e in events] == [
        "tenant.purged",
        "tenant.deleted",
        "tenant.restored",
        "tenant.deleted",
        "tenant.suspended",
        "tenant.resumed",
        "tenant.suspended",
        "tenant.updated",
        "tenant.created",
    ]
    oldest_first = list(reversed(events))
    assert [e["request_id"] for e in oldest_first[:-1]] == request_ids
    assert {e["actor"] for e in oldest_first[:-1]} == {"ops-alice"}
    assert oldest_first[-1]["actor"] == "system" and oldest_first[-1]["request_id"] is None
    assert len({e["tenant_id"] for e in events}) == 1
    assert {e["tenant_slug"] for e in events} == {slug}

    created, updated, suspended = oldest_first[0], oldest_first[1], oldest_first[2]
    assert created["changes"] == {"name": "Before", "plan": "free", "rate_limit": None}
    assert updated["changes"] == {
        "name": {"from": "Before", "to": "After"},
        "plan": {"from": "free", "to": "pro"},
    }
    assert suspended["changes"] == {"status": {"from": "active", "to": "suspended"}}
    deleted, restored = oldest_first[5], oldest_first[6]
    assert deleted["changes"]["status"] == {"from": "suspended", "to": "deleted"}
    assert deleted["changes"]["purge_after"]["to"] is not None
    assert restored["changes"]["status"] == {"from": "deleted", "to": "suspended"}
    assert oldest_first[-1]["changes"]["reason"] == "purged now by an operator"


async def test_a_refused_action_records_nothing(
    graced: httpx.AsyncClient, operator: Headers, unique_slug: Callable[[str], str]
) -> None:
    slug = unique_slug("ref")
    body = {"slug": slug, "name": "Once"}
    assert (await graced.post("/admin/v1/tenants", json=body, headers=operator)).is_success
    assert_problem(
        await graced.post("/admin/v1/tenants", json=body, headers=operator), 409, "tenant_exists"
    )
    assert_problem(
        await graced.delete(f"/admin/v1/tenants/{slug}", headers=operator), 409, "tenant_active"
    )
    assert_problem(
        await graced.post(f"/admin/v1/tenants/{slug}/restore", headers=operator),
        409,
        "tenant_not_deleted",
    )
    assert [e["action"] for e in await events_of(graced, operator, slug)] == ["tenant.created"]


async def test_record_rolls_back_with_the_change_it_records(
    engine: AsyncEngine, settings: Settings
) -> None:
    record = await make_tenant(engine, settings)
    with pytest.raises(RuntimeError):
        async with engine.begin() as conn:
            await admin_audit.record(
                conn, actor="exporter", action="tenant.exported", tenant=record, changes={}
            )
            raise RuntimeError("the export failed")
    async with engine.connect() as conn:
        await admin_audit.record(conn, actor="exporter", action="tenant.exported", tenant=record)
        await conn.commit()
        count = await conn.scalar(
            text(
                "SELECT count(*) FROM platform.admin_audit_events "
                "WHERE tenant_id = :id AND action = 'tenant.exported'"
            ),
            {"id": record.id},
        )
    assert count == 1


async def test_pages_newest_first_filtered_by_tenant(
    client: httpx.AsyncClient, admin: Headers, engine: AsyncEngine, settings: Settings
) -> None:
    record = await make_tenant(engine, settings)
    other = await make_tenant(engine, settings)
    for name in ("a", "b", "c", "d"):
        await service.update_tenant(engine, record.slug, name=name)
    seen: list[dict[str, Any]] = []
    cursor = ""
    while True:
        params = {"tenant": record.slug, "limit": "2", "cursor": cursor}
        page = (await client.get("/admin/v1/audit-events", params=params, headers=admin)).json()
        assert len(page["items"]) <= 2
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [e["action"] for e in seen] == ["tenant.updated"] * 4 + ["tenant.created"]
    assert [e["changes"].get("name", {}).get("to") for e in seen[:4]] == ["d", "c", "b", "a"]
    assert len({e["id"] for e in seen}) == 5
    assert {e["tenant_slug"] for e in seen} == {record.slug}

    everything = (await client.get("/admin/v1/audit-events?limit=100", headers=admin)).json()
    slugs = {e["tenant_slug"] for e in everything["items"]}
    assert {record.slug, other.slug} <= slugs
    unknown = await client.get("/admin/v1/audit-events?tenant=never-was", headers=admin)
    assert unknown.status_code == 200 and unknown.json() == {"items": [], "next_cursor": None}


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("cursor=garbage", "invalid_cursor"),
        ("limit=0", "validation_error"),
        ("limit=101", "validation_error"),
        ("tenant=Not_A_Slug", "validation_error"),
        ("tenant=ab", "validation_error"),
    ],
)
async def test_bad_query_is_422(
    client: httpx.AsyncClient, admin: Headers, query: str, code: str
) -> None:
    assert_problem(await client.get(f"/admin/v1/audit-events?{query}", headers=admin), 422, code)


async def test_only_admins_read_the_audit_log(
    client: httpx.AsyncClient, make_token: MakeToken
) -> None:
    assert_problem(await client.get("/admin/v1/audit-events"), 401, "not_authenticated")
    tenant_token = make_token(tenant="acme", scopes="api:read api:write platform:admin")
    response = await client.get(
        "/admin/v1/audit-events", headers={"Authorization": f"Bearer {tenant_token}"}
    )
    assert_problem(response, 403, "insufficient_scope")


async def test_the_create_command_records_its_operating_system_user(
    database_url: str,
    settings: Settings,
    client: httpx.AsyncClient,
    admin: Headers,
    unique_slug: Callable[[str], str],
) -> None:
    slug = unique_slug("cli")
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app.cli", "tenants", "create", slug],
        env=cli_env(database_url, settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    (created,) = await events_of(client, admin, slug)
    assert (created["action"], created["actor"]) == ("tenant.created", f"cli:{getpass.getuser()}")
    assert created["request_id"] is None


async def test_the_purge_command_records_its_operating_system_user(
    database_url: str,
    settings: Settings,
    engine: AsyncEngine,
    client: httpx.AsyncClient,
    admin: Headers,
) -> None:
    record = await make_tenant(engine, settings)
    await service.update_tenant(engine, record.slug, status="suspended")
    await tenant_lifecycle.delete_tenant(engine, record.slug, grace_seconds=3600)
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app.cli", "tenants", "purge", "--now", record.slug],
        env=cli_env(database_url, settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    (purged, *_) = await events_of(client, admin, record.slug)
    assert purged["action"] == "tenant.purged"
    assert purged["actor"] == f"cli:{getpass.getuser()}"


async def test_an_export_and_an_import_are_recorded_with_the_archive_they_moved(
    graced: httpx.AsyncClient, operator: Headers, unique_slug: Callable[[str], str]
) -> None:
    slug, copy = unique_slug("exp"), unique_slug("imp")
    body = {"slug": slug, "name": "Moved", "plan": "pro"}
    assert (await graced.post("/admin/v1/tenants", json=body, headers=operator)).is_success
    exported = await graced.post(f"/admin/v1/tenants/{slug}/export", headers=operator)
    assert exported.status_code == 200, exported.text
    imported = await graced.post(
        "/admin/v1/tenants/import",
        params={"slug": copy},
        content=exported.content,
        headers={**operator, "Content-Type": "application/octet-stream"},
    )
    assert imported.status_code == 201, imported.text

    (export_event, _created) = await events_of(graced, operator, slug)
    assert (export_event["action"], export_event["actor"]) == ("tenant.exported", "ops-alice")
    archive = export_event["changes"]["archive"]
    assert archive["slug"] == slug and archive["rows"] >= 0 and archive["schema_version"]
    (import_event,) = await events_of(graced, operator, copy)
    assert (import_event["action"], import_event["actor"]) == ("tenant.imported", "ops-alice")
    assert import_event["tenant_slug"] == copy
    assert import_event["changes"]["archive"] == archive
    assert import_event["changes"]["name"] == "Moved"
