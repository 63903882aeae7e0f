"""Test fixtures: a fresh PostgreSQL database per session, real Redis, the app over ASGI."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.db.engine import build_engine
from app.db.migrate import migrate_shared
from app.db.repositories.tenants import TenantRecord
from app.main import create_app
from app.services.tenants import create_tenant
from tests.factories import make_tenant

SERVER_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


@pytest.fixture(scope="session")
def database_name() -> Iterator[str]:
    import asyncio

    name = f"tessera_test_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        conn = await asyncpg.connect(SERVER_URL)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    async def drop() -> None:
        conn = await asyncpg.connect(SERVER_URL)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(create())
    yield name
    asyncio.run(drop())
    asyncio.run(_drop_test_roles())


@pytest.fixture(scope="session")
def database_url(database_name: str) -> str:
    return with_database(SERVER_URL, database_name)


ROLE_PREFIX = f"t{uuid.uuid4().hex[:6]}_"


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    return Settings(
        environment="test",
        database_url=database_url,
        redis_url=REDIS_URL,
        log_level="WARNING",
        db_pool_size=5,
        db_tenant_role_prefix=ROLE_PREFIX,
    )


@pytest.fixture(scope="session")
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """The session database, migrated once (shared schema)."""
    eng = build_engine(settings)
    await migrate_shared(eng)
    yield eng
    await eng.dispose()


async def _drop_test_roles() -> None:
    # Roles are cluster-wide: drop the ones this session created (the database goes too).
    conn = await asyncpg.connect(SERVER_URL)
    try:
        roles = await conn.fetch(
            "SELECT rolname FROM pg_roles WHERE rolname LIKE $1", ROLE_PREFIX + "%"
        )
        for row in roles:
            await conn.execute(f'DROP ROLE IF EXISTS "{row["rolname"]}"')
    finally:
        await conn.close()


@pytest.fixture
def unique_slug() -> Callable[[str], str]:
    def make(prefix: str = "t") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:10]}"

    return make


@pytest.fixture
async def tenant(
    engine: AsyncEngine, settings: Settings, unique_slug: Callable[[str], str]
) -> TenantRecord:
    """A freshly provisioned, active tenant of its own for one test."""
    return await create_tenant(
        engine, settings, slug=unique_slug("acme"), name="Acme", plan="pro", rate_limit=None
    )


@pytest.fixture(scope="session")
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


@pytest.fixture(scope="session")
async def app(
    settings: Settings, engine: AsyncEngine, redis_client: aioredis.Redis
) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with LifespanManager(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


# --- the tenant API's callers ------------------------------------------------------------

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
