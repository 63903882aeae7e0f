"""The tenant registry kept warm by change notifications: no query for a tenant already
looked up, any change of `platform.tenants` in force within 1 second, and the TTL again
whenever the notifications are not proven to arrive (CONTRACT section 7)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.db.engine import build_engine
from app.db.repositories.tenants import TenantRecord
from app.services import provisioning
from app.services import tenants as service
from app.services.tenants import UNKNOWN, TenantRegistry
from tests.support import eventually

Headers = dict[str, str]


class Lookups:
    """An engine of the registry's own, counting the statements that read the registry."""

    def __init__(self, settings: Settings) -> None:
        self.engine = build_engine(settings)
        self.statements: list[str] = []
        event.listen(self.engine.sync_engine, "before_cursor_execute", self._record)

    def _record(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "platform.tenants" in statement:
            self.statements.append(statement)

    @property
    def count(self) -> int:
        return len(self.statements)


@pytest.fixture
async def lookups(settings: Settings) -> AsyncIterator[Lookups]:
    counted = Lookups(settings)
    yield counted
    await counted.engine.dispose()


@pytest.fixture
async def registry(
    settings: Settings, lookups: Lookups, tenant: TenantRecord
) -> AsyncIterator[TenantRegistry]:
    """A started registry (as the app's lifespan starts it), once it hears notifications.
    It starts after the test's tenant exists: the notification of that tenant's creation,
    arriving during a first lookup, would rightly keep that lookup's entry to its TTL."""
    started = TenantRegistry(lookups.engine, settings)
    started.start()
    try:
        await until_live(started, True, within=2.0)
        yield started
    finally:
        await started.aclose()


async def until_live(registry: TenantRegistry, live: bool, within: float) -> None:
    async def probe() -> bool:
        return registry.live

    await eventually(probe, live, within)


def field_of(registry: TenantRegistry, slug: str, name: str) -> Callable[[], Awaitable[object]]:
    """A probe: the tenant's `name` field as the registry answers it (None: no tenant)."""

    async def probe() -> object:
        tenant = await registry.get(slug)
        return getattr(tenant, name) if tenant is not None else None

    return probe


async def past_the_ttl(settings: Settings) -> None:
    """Long enough that only the notifications can keep an entry fresh."""
    await asyncio.sleep(settings.tenant_registry_ttl_seconds + 0.2)


async def test_a_started_registry_answers_a_known_tenant_without_a_query_past_the_ttl(
    settings: Settings, registry: TenantRegistry, lookups: Lookups, tenant: TenantRecord
) -> None:
    first = await registry.get(tenant.slug)
    assert first is not None and first.slug == tenant.slug
    assert lookups.count == 1
    await past_the_ttl(settings)
    assert registry.peek(tenant.slug) == first
    assert await registry.get(tenant.slug) == first
    assert lookups.count == 1


async def test_a_suspend_and_a_patch_through_the_admin_api_reach_a_started_registry_within_1s(
    settings: Settings,
    registry: TenantRegistry,
    tenant: TenantRecord,
    client: httpx.AsyncClient,
    admin: Headers,
) -> None:
    status = field_of(registry, tenant.slug, "status")
    assert await status() == "active"
    await past_the_ttl(settings)  # from here on only a notification changes the entry

    response = await client.post(f"/admin/v1/tenants/{tenant.slug}/suspend", headers=admin)
    assert response.status_code == 200
    await eventually(status, "suspended", within=1.0)

    response = await client.patch(
        f"/admin/v1/tenants/{tenant.slug}", json={"plan": "enterprise"}, headers=admin
    )
    assert response.status_code == 200
    await eventually(field_of(registry, tenant.slug, "plan"), "enterprise", within=1.0)


async def test_rows_written_by_hand_or_by_provisioning_reach_a_started_registry_within_1s(
    settings: Settings,
    registry: TenantRegistry,
    engine: AsyncEngine,
    unique_slug: Callable[[str], str],
) -> None:
    by_hand, renamed, provisioned = unique_slug("hand"), unique_slug("renamed"), unique_slug("new")
    for slug in (by_hand, renamed, provisioned):
        assert await registry.get(slug) is None
    await past_the_ttl(settings)  # the "no such tenant" entries are now kept by notifications

    async def sql(statement: str, **params: object) -> None:
        async with engine.begin() as conn:  # another connection, as psql would be
            await conn.execute(text(statement), params)

    def name(slug: str) -> Callable[[], Awaitable[object]]:
        return field_of(registry, slug, "name")

    await sql(
        "INSERT INTO platform.tenants (id, slug, name, plan, status, schema, db_role) "
        "VALUES (:id, :slug, 'By hand', 'free', 'active', :schema, :role)",
        id=uuid.uuid4(),
        slug=by_hand,
        schema=f"hand_{uuid.uuid4().hex}",
        role=f"hand_{uuid.uuid4().hex}",
    )
    await eventually(name(by_hand), "By hand", within=1.0)

    await sql("UPDATE platform.tenants SET slug = :new WHERE slug = :old", new=renamed, old=by_hand)
    await eventually(name(by_hand), None, within=1.0)
    await eventually(name(renamed), "By hand", within=1.0)

    await sql("DELETE FROM platform.tenants WHERE slug = :slug", slug=renamed)
    await eventually(name(renamed), None, within=1.0)

    # Provisioning inserts the row as 'provisioning' and activates it in one transaction.
    await provisioning.create_tenant(
        engine, settings, slug=provisioned, name="New", plan="free", rate_limit=None
    )
    await eventually(name(provisioned), "New", within=1.0)


async def test_a_killed_listener_falls_back_to_the_ttl_then_hears_notifications_again(
    settings: Settings,
    registry: TenantRegistry,
    lookups: Lookups,
    engine: AsyncEngine,
    tenant: TenantRecord,
) -> None:
    assert await registry.get(tenant.slug) is not None
    assert lookups.count == 1
    listener_pid = registry._feed._listener.get_server_pid()  # noqa: SLF001
    async with engine.begin() as conn:
        await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": listener_pid})
    await until_live(registry, False, within=1.0)

    # The entry was loaded under the lost listener: it lives its TTL and no longer,
    # even once a new listener hears notifications.
    await past_the_ttl(settings)
    assert registry.peek(tenant.slug) is UNKNOWN
    assert await registry.get(tenant.slug) is not None
    assert lookups.count == 2

    await until_live(registry, True, within=2.0)
    registry.forget(tenant.slug)
    assert await registry.get(tenant.slug) is not None
    assert lookups.count == 3
    await past_the_ttl(settings)
    assert await registry.get(tenant.slug) is not None
    assert lookups.count == 3


async def test_a_registry_never_started_reloads_each_tenant_after_the_ttl(
    settings: Settings, lookups: Lookups, tenant: TenantRecord
) -> None:
    registry = TenantRegistry(lookups.engine, settings)
    assert await registry.get(tenant.slug) is not None
    assert registry.peek(tenant.slug) is not UNKNOWN
    await past_the_ttl(settings)
    assert not registry.live
    assert registry.peek(tenant.slug) is UNKNOWN
    assert await registry.get(tenant.slug) is not None
    assert lookups.count == 2


async def test_a_load_that_overlaps_a_change_is_kept_for_the_ttl_only(
    settings: Settings, registry: TenantRegistry, engine: AsyncEngine, tenant: TenantRecord
) -> None:
    original = registry._load
    read, release = asyncio.Event(), asyncio.Event()

    async def slow_load(slug: str) -> service.Tenant | None:
        found = await original(slug)  # reads the tenant as active
        read.set()
        await release.wait()
        return found

    registry._load = slow_load  # type: ignore[method-assign]
    loading = asyncio.create_task(registry.get(tenant.slug))
    await read.wait()
    changes = registry._changes  # noqa: SLF001
    await service.update_tenant(engine, tenant.slug, status="suspended")

    async def notified() -> bool:
        return registry._changes > changes  # noqa: SLF001

    await eventually(notified, True, within=1.0)
    release.set()
    stale = await loading
    assert stale is not None and stale.status == "active"
    registry._load = original  # type: ignore[method-assign]
    # Stored as read, but only for the TTL: the notification it overlapped is not lost.
    await eventually(field_of(registry, tenant.slug, "status"), "suspended", within=1.0)
