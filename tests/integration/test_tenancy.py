"""Tenancy: pinning, isolation enforced twice, atomic provisioning, identical schemas."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.exc import DBAPIError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.core.config import Settings
from app.db import tenancy
from app.db.engine import build_engine
from app.db.migrate import TENANT_DIR, load_script
from app.db.models.tenant import projects
from app.db.repositories.tenants import TenantRecord
from app.db.tenancy import TenantSchema, pin_tenant
from app.services import provisioning, tenant_lifecycle
from app.services import tenants as service
from app.services.tenants import TenantExists


def loc(record: TenantRecord) -> TenantSchema:
    return TenantSchema(schema=record.schema, role=record.db_role)


async def add_project(conn: AsyncConnection, name: str) -> uuid.UUID:
    project_id = uuid.uuid4()
    await conn.execute(insert(projects).values(id=project_id, name=name))
    return project_id


async def project_names(engine: AsyncEngine, record: TenantRecord) -> set[str]:
    async with engine.connect() as conn, conn.begin():
        await pin_tenant(conn, loc(record))
        return set((await conn.execute(select(projects.c.name))).scalars())


async def session_settings(conn: AsyncConnection) -> tuple[str, str]:
    row = (await conn.execute(text("SELECT current_setting('search_path'), current_user"))).one()
    return row[0], row[1]


async def test_each_tenant_sees_only_its_own_rows_through_one_pooled_connection(
    settings: Settings, tenant: TenantRecord, engine: AsyncEngine
) -> None:
    other = await provisioning.create_tenant(
        engine,
        settings,
        slug=f"other-{uuid.uuid4().hex[:8]}",
        name="O",
        plan="free",
        rate_limit=None,
    )
    one_connection = build_engine(
        settings.model_copy(update={"db_pool_size": 1, "db_max_overflow": 0})
    )
    try:
        for record, name in ((tenant, "mine"), (other, "theirs")):
            async with one_connection.connect() as conn, conn.begin():
                await pin_tenant(conn, loc(record))
                await add_project(conn, name)
        assert await project_names(one_connection, tenant) == {"mine"}
        assert await project_names(one_connection, other) == {"theirs"}
    finally:
        await one_connection.dispose()


async def test_interleaved_requests_from_many_tenants_stay_isolated(
    settings: Settings, engine: AsyncEngine, unique_slug: Callable[[str], str]
) -> None:
    records = [
        await provisioning.create_tenant(
            engine, settings, slug=unique_slug("mix"), name="m", plan="free", rate_limit=None
        )
        for _ in range(6)
    ]
    small = build_engine(settings.model_copy(update={"db_pool_size": 2, "db_max_overflow": 0}))

    async def work(record: TenantRecord, i: int) -> None:
        async with small.connect() as conn, conn.begin():
            await pin_tenant(conn, loc(record))
            await add_project(conn, f"{record.slug}-{i}")
            await asyncio.sleep(0)
            names = set((await conn.execute(select(projects.c.name))).scalars())
            assert all(n.startswith(record.slug) for n in names)

    try:
        await asyncio.gather(*(work(r, i) for i in range(5) for r in records))
        for record in records:
            assert await project_names(small, record) == {f"{record.slug}-{i}" for i in range(5)}
    finally:
        await small.dispose()


@pytest.mark.parametrize("ending", ["commit", "rollback", "savepoint"])
async def test_pin_ends_with_the_transaction(
    settings: Settings, tenant: TenantRecord, ending: str
) -> None:
    one = build_engine(settings.model_copy(update={"db_pool_size": 1, "db_max_overflow": 0}))
    try:
        async with one.connect() as conn:
            before = await session_settings(conn)
            await conn.commit()
            transaction = await conn.begin()
            await pin_tenant(conn, loc(tenant))
            assert await session_settings(conn) == (f'"{tenant.schema}"', tenant.db_role)
            if ending == "savepoint":
                savepoint = await conn.begin_nested()
                await savepoint.rollback()
                # a savepoint rollback keeps the pin for the rest of the transaction
                assert (await session_settings(conn))[1] == tenant.db_role
                await transaction.rollback()
            elif ending == "commit":
                await transaction.commit()
            else:
                await transaction.rollback()
            assert await session_settings(conn) == before
            await conn.commit()
        async with one.connect() as conn:  # the same pooled connection, checked out again
            assert await session_settings(conn) == before
    finally:
        await one.dispose()


async def test_tenant_role_cannot_read_another_schema_even_without_search_path(
    settings: Settings, tenant: TenantRecord, engine: AsyncEngine
) -> None:
    other = await provisioning.create_tenant(
        engine,
        settings,
        slug=f"victim-{uuid.uuid4().hex[:8]}",
        name="V",
        plan="free",
        rate_limit=None,
    )
    async with engine.connect() as conn:
        async with conn.begin():
            await pin_tenant(conn, loc(tenant))
            with pytest.raises(ProgrammingError, match="permission denied"):
                await conn.execute(text(f'SELECT * FROM "{other.schema}".projects'))


async def test_tenant_role_cannot_read_the_registry(
    tenant: TenantRecord, engine: AsyncEngine
) -> None:
    async with engine.connect() as conn:
        async with conn.begin():
            await pin_tenant(conn, loc(tenant))
            with pytest.raises(ProgrammingError, match="permission denied"):
                await conn.execute(text("SELECT * FROM platform.tenants"))


async def _objects_exist(engine: AsyncEngine, schema: str, role: str, slug: str) -> list[str]:
    found = []
    async with engine.connect() as conn:
        if await conn.scalar(text("SELECT 1 FROM pg_namespace WHERE nspname=:s"), {"s": schema}):
            found.append("schema")
        if await conn.scalar(text("SELECT 1 FROM pg_roles WHERE rolname=:r"), {"r": role}):
            found.append("role")
        if await conn.scalar(text("SELECT 1 FROM platform.tenants WHERE slug=:s"), {"s": slug}):
            found.append("registry row")
    return found


@pytest.mark.parametrize("failing_step", [name for name, _ in provisioning.PROVISIONING_STEPS])
async def test_provisioning_failure_in_any_step_leaves_nothing_behind(
    settings: Settings,
    engine: AsyncEngine,
    unique_slug: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
    failing_step: str,
) -> None:
    async def boom(conn: AsyncConnection, location: TenantSchema) -> None:
        raise RuntimeError(f"injected failure in {failing_step}")

    steps = [(n, boom if n == failing_step else s) for n, s in provisioning.PROVISIONING_STEPS]
    monkeypatch.setattr(provisioning, "PROVISIONING_STEPS", steps)
    slug = unique_slug("fail")
    with pytest.raises(RuntimeError, match="injected"):
        await provisioning.create_tenant(
            engine, settings, slug=slug, name="F", plan="free", rate_limit=None
        )
    location = tenancy.schema_for(slug, settings.db_tenant_role_prefix)
    assert await _objects_exist(engine, location.schema, location.role, slug) == []


async def test_two_concurrent_creates_of_one_slug_give_one_tenant(
    settings: Settings, engine: AsyncEngine, unique_slug: Callable[[str], str]
) -> None:
    slug = unique_slug("race")
    results = await asyncio.gather(
        *(
            provisioning.create_tenant(
                engine, settings, slug=slug, name="R", plan="free", rate_limit=None
            )
            for _ in range(2)
        ),
        return_exceptions=True,
    )
    assert sum(isinstance(r, TenantRecord) for r in results) == 1
    assert sum(isinstance(r, TenantExists) for r in results) == 1


CATALOG_QUERY = """
SELECT 'column' AS kind, table_name || '.' || column_name || ' ' || data_type || ' '
       || is_nullable || ' ' || coalesce(column_default, '') AS what
  FROM information_schema.columns WHERE table_schema = :s
UNION ALL
SELECT 'constraint', conrelid::regclass::text || ' ' || conname || ' '
       || pg_get_constraintdef(oid)
  FROM pg_constraint WHERE connamespace = CAST(:s AS regnamespace)
UNION ALL
SELECT 'index', indexname || ' ' || regexp_replace(indexdef, '"?' || :s || '"?\\.', '', 'g')
  FROM pg_indexes WHERE schemaname = :s
UNION ALL
SELECT 'privilege', table_name || ' ' || privilege_type || ' ' ||
       CASE WHEN grantee LIKE '%tenant%' THEN 'tenant' ELSE 'owner' END
  FROM information_schema.role_table_grants WHERE table_schema = :s
ORDER BY 1, 2
"""


async def _catalog(engine: AsyncEngine, schema: str) -> list[tuple[str, str]]:
    async with engine.connect() as conn:
        rows = (await conn.execute(text(CATALOG_QUERY), {"s": schema})).all()
    return [(kind, what.replace(f"{schema}.", "")) for kind, what in rows]


async def test_models_and_migrations_build_the_identical_schema(
    settings: Settings, engine: AsyncEngine, unique_slug: Callable[[str], str]
) -> None:
    from_models = await provisioning.create_tenant(
        engine, settings, slug=unique_slug("models"), name="m", plan="free", rate_limit=None
    )
    from_migrations = await provisioning.create_tenant(
        engine,
        settings,
        slug=unique_slug("migs"),
        name="m",
        plan="free",
        rate_limit=None,
        from_migrations=True,
    )
    models_catalog = await _catalog(engine, from_models.schema)
    migrations_catalog = await _catalog(engine, from_migrations.schema)
    assert len(models_catalog) > 20
    assert models_catalog == migrations_catalog
    head = load_script(TENANT_DIR).get_current_head()
    for record in (from_models, from_migrations):
        assert record.schema_version == head
        async with engine.connect() as conn:
            version = await conn.scalar(
                text(f'SELECT version_num FROM "{record.schema}".alembic_version')
            )
        assert version == head


async def test_delete_drops_schema_role_and_row(
    settings: Settings, tenant: TenantRecord, engine: AsyncEngine
) -> None:
    await service.update_tenant(engine, tenant.slug, status="suspended")
    await tenant_lifecycle.delete_tenant(engine, tenant.slug, grace_seconds=0)
    assert await _objects_exist(engine, tenant.schema, tenant.db_role, tenant.slug) == []


async def test_schema_name_is_derived_and_short() -> None:
    location = tenancy.schema_for("a" * 40)
    assert len(location.schema.encode()) < 63
    assert tenancy.schema_for("big-corp-2").schema == "tenant_big_corp_2"


@pytest.mark.parametrize(
    "slug",
    [
        "admin",
        "public",
        "pgx",
        "pg-stuff",
        "ab",
        "a" * 41,
        "Acme",
        "1abc",
        "a--b",
        "a-",
        "-a",
        "a_b",
        "acme;drop",
        "a b",
        "ünï",
        "acme\x00",
        "tenant'x",
        "acme\n",
    ],
)
def test_bad_slugs_are_refused(slug: str) -> None:
    assert tenancy.slug_problem(slug) is not None


async def test_pinned_connection_error_is_database_error(
    tenant: TenantRecord, engine: AsyncEngine
) -> None:
    async with engine.connect() as conn:
        async with conn.begin():
            await pin_tenant(conn, loc(tenant))
            with pytest.raises(DBAPIError):
                await conn.execute(text("SELECT * FROM no_such_table"))


@pytest.mark.parametrize("name", ["tenant_acme\n", "Tenant", "a-b", 'x"y', "", "a" * 64])
def test_quote_ident_refuses_anything_but_plain_identifiers(name: str) -> None:
    with pytest.raises(ValueError):
        tenancy.quote_ident(name)


async def test_a_role_name_taken_on_the_server_is_409_and_leaves_nothing(
    settings: Settings, engine: AsyncEngine, unique_slug: Callable[[str], str]
) -> None:
    slug = unique_slug("taken")
    location = tenancy.schema_for(slug, settings.db_tenant_role_prefix)
    async with engine.begin() as conn:  # e.g. another Tessera database on the same server
        await conn.execute(text(f'CREATE ROLE "{location.role}"'))
    try:
        with pytest.raises(TenantExists, match="already exists on the server"):
            await provisioning.create_tenant(
                engine, settings, slug=slug, name="T", plan="free", rate_limit=None
            )
        assert await _objects_exist(engine, location.schema, location.role, slug) == ["role"]
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP ROLE "{location.role}"'))


async def test_registry_waiters_survive_the_cancellation_of_the_request_loading_for_them(
    settings: Settings, engine: AsyncEngine, tenant: TenantRecord
) -> None:
    registry = service.TenantRegistry(engine, settings)
    started = asyncio.Event()
    release = asyncio.Event()
    original = registry._load

    async def slow_load(slug: str) -> service.Tenant | None:
        started.set()
        await release.wait()
        return await original(slug)

    registry._load = slow_load  # type: ignore[method-assign]
    leader = asyncio.create_task(registry.get(tenant.slug))
    await started.wait()
    waiters = [asyncio.create_task(registry.get(tenant.slug)) for _ in range(3)]
    await asyncio.sleep(0.01)
    leader.cancel()
    await asyncio.sleep(0.01)
    release.set()
    results = await asyncio.gather(*waiters)
    assert [r.slug if r else None for r in results] == [tenant.slug] * 3
    with pytest.raises(asyncio.CancelledError):
        await leader
