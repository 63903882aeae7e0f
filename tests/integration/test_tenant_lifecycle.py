"""Deletion with a grace period, restore and purge (decision 0023), over HTTP, the service and
the `tessera tenants purge` command, against real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import redis.asyncio as aioredis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.db.repositories.tenants import TenantRecord
from app.services import cache_entries
from app.services import tenant_lifecycle as lifecycle
from app.services import tenants as service
from app.services.tenant_keys import TenantKeys
from app.services.tenants import TenantNotFound
from tests.factories import make_tenant, post_project
from tests.integration.test_fleet_migration import cli_env
from tests.support import assert_problem, count_rows, eventually, running_app

Headers = dict[str, str]
GRACE = 3600


@pytest.fixture(scope="module")
async def graced(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API with a grace period of an hour (the session's app purges at once)."""
    async with running_app(settings.model_copy(update={"tenant_purge_grace_seconds": GRACE})) as (
        _,
        client,
    ):
        yield client


async def objects_left(engine: AsyncEngine, record: TenantRecord) -> list[str]:
    found = []
    async with engine.connect() as conn:
        for what, query, value in (
            ("schema", "SELECT 1 FROM pg_namespace WHERE nspname = :v", record.schema),
            ("role", "SELECT 1 FROM pg_roles WHERE rolname = :v", record.db_role),
            ("registry row", "SELECT 1 FROM platform.tenants WHERE id = :v", record.id),
        ):
            if await conn.scalar(text(query), {"v": value}):
                found.append(what)
    return found


async def deleted_tenant(
    engine: AsyncEngine, settings: Settings, *, past_grace: bool = False
) -> TenantRecord:
    """A tenant deleted through the service, its grace period over when `past_grace`."""
    record = await make_tenant(engine, settings)
    await service.update_tenant(engine, record.slug, status="suspended")
    deletion = await lifecycle.delete_tenant(engine, record.slug, grace_seconds=GRACE)
    if past_grace:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE platform.tenants SET purge_after = now() - interval '1 second' "
                    "WHERE id = :id"
                ),
                {"id": record.id},
            )
    return deletion.tenant


async def suspend_and_delete(client: httpx.AsyncClient, slug: str, admin: Headers) -> None:
    assert (await client.post(f"/admin/v1/tenants/{slug}/suspend", headers=admin)).is_success
    deleted = await client.delete(f"/admin/v1/tenants/{slug}", headers=admin)
    assert deleted.status_code == 204 and deleted.content == b"", deleted.text


async def test_delete_makes_a_suspended_tenant_deleted_with_its_data_untouched(
    graced: httpx.AsyncClient,
    tenant: TenantRecord,
    headers: Headers,
    admin: Headers,
    engine: AsyncEngine,
) -> None:
    await post_project(graced, headers, name="kept")
    before = datetime.now(UTC)
    await suspend_and_delete(graced, tenant.slug, admin)

    shown = (await graced.get(f"/admin/v1/tenants/{tenant.slug}", headers=admin)).json()
    assert shown["status"] == "deleted"
    purge_after = datetime.fromisoformat(shown["purge_after"])
    assert before + timedelta(seconds=GRACE - 5) < purge_after
    assert purge_after < datetime.now(UTC) + timedelta(seconds=GRACE + 5)
    assert await objects_left(engine, tenant) == ["schema", "role", "registry row"]
    assert await count_rows(engine, tenant, "projects") == 1


async def test_deleted_tenants_tokens_get_403_tenant_deleted(
    graced: httpx.AsyncClient,
    second_client: httpx.AsyncClient,
    tenant: TenantRecord,
    headers: Headers,
    admin: Headers,
) -> None:
    assert (await second_client.get("/v1/tenant", headers=headers)).status_code == 200
    await suspend_and_delete(graced, tenant.slug, admin)

    async def code_on_the_other_replica() -> object:
        return (await second_client.get("/v1/projects", headers=headers)).json().get("code")

    await eventually(code_on_the_other_replica, "tenant_deleted", within=1.0)
    assert_problem(await graced.get("/v1/tenant", headers=headers), 403, "tenant_deleted")
    assert_problem(
        await graced.post("/v1/projects", json={"name": "no"}, headers=headers),
        403,
        "tenant_deleted",
    )


async def test_slug_of_a_deleted_tenant_stays_taken_and_listing_filters_by_deleted(
    graced: httpx.AsyncClient, tenant: TenantRecord, admin: Headers
) -> None:
    await suspend_and_delete(graced, tenant.slug, admin)
    again = await graced.post(
        "/admin/v1/tenants", json={"slug": tenant.slug, "name": "Again"}, headers=admin
    )
    assert_problem(again, 409, "tenant_exists")
    listed = await graced.get("/admin/v1/tenants?status=deleted&limit=100", headers=admin)
    assert listed.status_code == 200
    assert tenant.slug in [t["slug"] for t in listed.json()["items"]]
    assert {t["status"] for t in listed.json()["items"]} == {"deleted"}
    active = await graced.get("/admin/v1/tenants?status=active&limit=100", headers=admin)
    assert tenant.slug not in [t["slug"] for t in active.json()["items"]]


async def test_a_deleted_tenant_takes_no_change_but_restore(
    graced: httpx.AsyncClient, tenant: TenantRecord, admin: Headers
) -> None:
    await suspend_and_delete(graced, tenant.slug, admin)
    base = f"/admin/v1/tenants/{tenant.slug}"
    for response in (
        await graced.post(f"{base}/resume", headers=admin),
        await graced.post(f"{base}/suspend", headers=admin),
        await graced.patch(base, json={"name": "x"}, headers=admin),
        await graced.delete(base, headers=admin),
    ):
        assert_problem(response, 409, "tenant_deleted")
    shown = (await graced.get(base, headers=admin)).json()
    assert (shown["status"], shown["name"]) == ("deleted", tenant.name)


async def test_restore_brings_it_back_suspended_then_resume_opens_its_api(
    graced: httpx.AsyncClient, tenant: TenantRecord, headers: Headers, admin: Headers
) -> None:
    project = await post_project(graced, headers, name="survives")
    await suspend_and_delete(graced, tenant.slug, admin)

    restored = await graced.post(f"/admin/v1/tenants/{tenant.slug}/restore", headers=admin)
    assert restored.status_code == 200, restored.text
    assert (restored.json()["status"], restored.json()["purge_after"]) == ("suspended", None)
    assert_problem(await graced.get("/v1/tenant", headers=headers), 403, "tenant_suspended")

    assert (await graced.post(f"/admin/v1/tenants/{tenant.slug}/resume", headers=admin)).is_success
    again = await graced.get(f"/v1/projects/{project['id']}", headers=headers)
    assert again.status_code == 200 and again.json()["name"] == "survives"


async def test_restore_of_a_tenant_not_deleted_is_409_and_of_an_unknown_one_404(
    graced: httpx.AsyncClient, tenant: TenantRecord, admin: Headers
) -> None:
    response = await graced.post(f"/admin/v1/tenants/{tenant.slug}/restore", headers=admin)
    assert_problem(response, 409, "tenant_not_deleted")
    response = await graced.post("/admin/v1/tenants/never-was/restore", headers=admin)
    assert_problem(response, 404, "tenant_not_found")
    response = await graced.post("/admin/v1/tenants/Not_A_Slug/restore", headers=admin)
    assert_problem(response, 422, "validation_error")


async def test_grace_of_zero_purges_within_the_delete(
    client: httpx.AsyncClient, tenant: TenantRecord, admin: Headers, engine: AsyncEngine
) -> None:
    await suspend_and_delete(client, tenant.slug, admin)  # the session app: grace 0
    assert await objects_left(engine, tenant) == []
    assert_problem(
        await client.get(f"/admin/v1/tenants/{tenant.slug}", headers=admin),
        404,
        "tenant_not_found",
    )


async def test_restore_of_a_purged_tenant_is_404(
    graced: httpx.AsyncClient, admin: Headers, engine: AsyncEngine, settings: Settings
) -> None:
    record = await deleted_tenant(engine, settings)
    await lifecycle.purge_tenant_now(engine, record.slug)
    response = await graced.post(f"/admin/v1/tenants/{record.slug}/restore", headers=admin)
    assert_problem(response, 404, "tenant_not_found")


async def test_purge_drops_deleted_tenants_past_their_grace_and_no_other(
    engine: AsyncEngine, settings: Settings, tenant: TenantRecord
) -> None:
    due = await deleted_tenant(engine, settings, past_grace=True)
    waiting = await deleted_tenant(engine, settings)
    await service.update_tenant(engine, tenant.slug, status="suspended")

    report = await lifecycle.purge_due(engine)

    purged = {record.slug for record in report.purged}
    assert due.slug in purged and waiting.slug not in purged and tenant.slug not in purged
    assert report.failed == {}
    assert await objects_left(engine, due) == []
    assert await objects_left(engine, waiting) == ["schema", "role", "registry row"]
    assert (await service.get_tenant(engine, tenant.slug)).status == "suspended"


async def test_two_purges_at_once_purge_each_tenant_once(
    engine: AsyncEngine, settings: Settings
) -> None:
    due = [await deleted_tenant(engine, settings, past_grace=True) for _ in range(4)]
    first, second = await asyncio.gather(lifecycle.purge_due(engine), lifecycle.purge_due(engine))
    assert first.failed == second.failed == {}
    ids = [record.id for record in first.purged + second.purged]
    assert len(ids) == len(set(ids))  # none purged twice
    assert {record.id for record in due} <= set(ids)
    for record in due:
        assert await objects_left(engine, record) == []
    async with engine.connect() as conn:
        purge_events = await conn.scalar(
            text(
                "SELECT count(*) FROM platform.admin_audit_events "
                "WHERE action = 'tenant.purged' AND tenant_id = ANY(:ids)"
            ),
            {"ids": [record.id for record in due]},
        )
    assert purge_events == len(due)


async def wait_for_a_lock_waiter(engine: AsyncEngine, waiters: int) -> None:
    async def waiting() -> int:
        async with engine.connect() as conn:
            return int(
                await conn.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND wait_event_type = 'Lock'"
                    )
                )
                or 0
            )

    await eventually(waiting, waiters, within=5.0)


async def hold_row(engine: AsyncEngine, record: TenantRecord, release: asyncio.Event) -> None:
    """Hold the tenant's row lock until `release`, as a transaction in progress would."""
    async with engine.begin() as conn:
        await conn.execute(
            text("SELECT 1 FROM platform.tenants WHERE id = :id FOR UPDATE"), {"id": record.id}
        )
        await release.wait()


async def test_restore_racing_a_purge_that_took_the_row_first_is_404(
    engine: AsyncEngine, settings: Settings
) -> None:
    record = await deleted_tenant(engine, settings)
    release = asyncio.Event()
    holder = asyncio.create_task(hold_row(engine, record, release))
    await asyncio.sleep(0.05)
    purge = asyncio.create_task(lifecycle.purge_tenant_now(engine, record.slug))
    await wait_for_a_lock_waiter(engine, 1)
    restore = asyncio.create_task(lifecycle.restore_tenant(engine, record.slug))
    await wait_for_a_lock_waiter(engine, 2)
    release.set()
    await holder
    assert (await purge).id == record.id
    with pytest.raises(TenantNotFound):
        await restore
    assert await objects_left(engine, record) == []


async def test_purge_racing_a_restore_that_took_the_row_first_is_409(
    engine: AsyncEngine, settings: Settings
) -> None:
    record = await deleted_tenant(engine, settings, past_grace=True)
    release = asyncio.Event()
    holder = asyncio.create_task(hold_row(engine, record, release))
    await asyncio.sleep(0.05)
    restore = asyncio.create_task(lifecycle.restore_tenant(engine, record.slug))
    await wait_for_a_lock_waiter(engine, 1)
    # The periodic purge skips the row another transaction holds, rather than wait for it.
    assert record.id not in {r.id for r in (await lifecycle.purge_due(engine)).purged}
    purge = asyncio.create_task(lifecycle.purge_tenant_now(engine, record.slug))
    await wait_for_a_lock_waiter(engine, 2)
    release.set()
    await holder
    assert (await restore).status == "suspended"
    with pytest.raises(lifecycle.TenantNotDeleted):
        await purge
    assert await objects_left(engine, record) == ["schema", "role", "registry row"]
    assert (await service.get_tenant(engine, record.slug)).purge_after is None


def tessera(database_url: str, settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "tenants", "purge", *args],
        env=cli_env(database_url, settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_purge_command_purges_due_tenants_and_drops_their_cached_reads(
    database_url: str, settings: Settings, engine: AsyncEngine, redis_client: aioredis.Redis
) -> None:
    due = await deleted_tenant(engine, settings, past_grace=True)
    waiting = await deleted_tenant(engine, settings)
    generation_key = cache_entries.generation_key(TenantKeys(due.slug, due.id))
    before = int(await redis_client.get(generation_key) or 0)

    result = await asyncio.to_thread(tessera, database_url, settings)

    assert result.returncode == 0, result.stderr
    assert f"tenant {due.slug} purged" in result.stdout
    assert waiting.slug not in result.stdout
    assert await objects_left(engine, due) == []
    assert int(await redis_client.get(generation_key) or 0) == before + 1
    again = await asyncio.to_thread(tessera, database_url, settings)
    assert again.returncode == 0 and due.slug not in again.stdout


async def test_purge_now_purges_one_deleted_tenant_and_refuses_any_other(
    database_url: str, settings: Settings, engine: AsyncEngine, tenant: TenantRecord
) -> None:
    waiting = await deleted_tenant(engine, settings)
    result = await asyncio.to_thread(tessera, database_url, settings, "--now", waiting.slug)
    assert result.returncode == 0, result.stderr
    assert f"tenant {waiting.slug} purged" in result.stdout
    assert await objects_left(engine, waiting) == []

    refused = await asyncio.to_thread(tessera, database_url, settings, "--now", tenant.slug)
    assert refused.returncode == 2
    assert "only a deleted tenant can be purged" in refused.stderr
    assert await objects_left(engine, tenant) == ["schema", "role", "registry row"]
    gone = await asyncio.to_thread(tessera, database_url, settings, "--now", waiting.slug)
    assert gone.returncode == 2 and "No tenant" in gone.stderr


async def test_deleted_tenants_show_in_the_tenants_gauge(
    graced: httpx.AsyncClient, tenant: TenantRecord, admin: Headers
) -> None:
    await suspend_and_delete(graced, tenant.slug, admin)
    scraped = (await graced.get("/metrics")).text
    line = next(
        s for s in scraped.splitlines() if s.startswith('tessera_tenants{status="deleted"}')
    )
    assert float(line.split()[-1]) >= 1
