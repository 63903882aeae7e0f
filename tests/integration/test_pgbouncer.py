"""Tenant isolation through PgBouncer in transaction mode, the pooler managed PostgreSQL
setups put in front: server connections are shared between clients transaction by
transaction, so anything session-level would leak between tenants."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.db.engine import build_engine
from app.db.models.tenant import projects
from app.db.repositories.tenants import TenantRecord
from app.db.tenancy import TenantSchema, pin_tenant
from app.main import create_app
from app.services import tenants as service
from app.services.tenants import UNKNOWN, TenantRegistry
from tests.conftest import SERVER_URL, MakeToken
from tests.integration.test_tenant_registry import field_of
from tests.servers import free_port
from tests.support import eventually

PGBOUNCER = shutil.which("pgbouncer") or (
    "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
)
pytestmark = pytest.mark.skipif(PGBOUNCER is None, reason="pgbouncer is not installed")


@pytest.fixture(scope="module")
def pgbouncer_port() -> Iterator[int]:
    assert PGBOUNCER is not None
    server = urlsplit(SERVER_URL)
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    workdir.chmod(0o777)
    (workdir / "users.txt").write_text(f'"{server.username or "postgres"}" ""\n')
    (workdir / "pgbouncer.ini").write_text(
        f"""[databases]
* = host={server.hostname or "127.0.0.1"} port={server.port or 5432}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {workdir / "users.txt"}
pool_mode = transaction
default_pool_size = 1
max_client_conn = 100
logfile = {workdir / "pgbouncer.log"}
pidfile = {workdir / "pgbouncer.pid"}
"""
    )
    command = [PGBOUNCER, str(workdir / "pgbouncer.ini")]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        for path in workdir.iterdir():
            path.chmod(0o666)
        command = ["runuser", "-u", "postgres", "--", *command]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if process.poll() is not None:
                pytest.fail(
                    f"pgbouncer exited: {process.stderr.read() if process.stderr else ''!r}"
                )
            time.sleep(0.05)
    yield port
    process.terminate()
    process.wait(timeout=10)
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def bouncer_settings(settings: Settings, pgbouncer_port: int, database_name: str) -> Settings:
    server = urlsplit(SERVER_URL)
    url = f"postgresql://{server.username or 'postgres'}@127.0.0.1:{pgbouncer_port}/{database_name}"
    # The one documented setting PgBouncer in transaction mode needs (README, Configuration).
    return settings.model_copy(
        update={"database_url": url, "db_statement_cache_size": 0, "db_pool_size": 4}
    )


@pytest.fixture
async def bouncer_engine(bouncer_settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = build_engine(bouncer_settings)
    yield engine
    await engine.dispose()


def loc(record: TenantRecord) -> TenantSchema:
    return TenantSchema(schema=record.schema, role=record.db_role)


async def test_interleaved_tenants_through_one_server_connection_stay_isolated(
    bouncer_engine: AsyncEngine, tenant: TenantRecord, other_tenant: TenantRecord
) -> None:
    async def work(record: TenantRecord, i: int) -> None:
        async with bouncer_engine.connect() as conn, conn.begin():
            await pin_tenant(conn, loc(record))
            await conn.execute(projects.insert().values(id=uuid.uuid4(), name=f"{record.slug}-{i}"))
            await asyncio.sleep(0.001)
            names = set((await conn.execute(select(projects.c.name))).scalars())
            assert all(name.startswith(record.slug) for name in names)

    await asyncio.gather(*(work(r, i) for i in range(10) for r in (tenant, other_tenant)))


async def test_no_setting_survives_the_transaction_behind_pgbouncer(
    bouncer_engine: AsyncEngine, tenant: TenantRecord
) -> None:
    async with bouncer_engine.connect() as conn:
        baseline = (
            await conn.execute(text("SELECT current_setting('search_path'), current_user"))
        ).one()
        await conn.commit()
        for ending in ("commit", "rollback"):
            transaction = await conn.begin()
            await pin_tenant(conn, loc(tenant))
            await (transaction.commit() if ending == "commit" else transaction.rollback())
            after = (
                await conn.execute(text("SELECT current_setting('search_path'), current_user"))
            ).one()
            await conn.commit()
            assert tuple(after) == tuple(baseline)


async def test_tenant_api_through_pgbouncer_keeps_tenants_apart(
    bouncer_settings: Settings,
    tenant: TenantRecord,
    other_tenant: TenantRecord,
    make_token: MakeToken,
) -> None:
    application = create_app(bouncer_settings)
    async with LifespanManager(application):
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:

            def auth(record: TenantRecord) -> dict[str, str]:
                return {"Authorization": f"Bearer {make_token(tenant=record.slug)}"}

            async def create(record: TenantRecord, i: int) -> str:
                response = await client.post(
                    "/v1/projects", json={"name": f"{record.slug}-{i}"}, headers=auth(record)
                )
                assert response.status_code == 201, response.text
                return str(response.json()["id"])

            ids = await asyncio.gather(
                *(create(r, i) for i in range(8) for r in (tenant, other_tenant))
            )
            mine = (await client.get("/v1/projects?limit=100", headers=auth(tenant))).json()
            assert {p["name"] for p in mine["items"]} == {f"{tenant.slug}-{i}" for i in range(8)}
            theirs_id = ids[1]  # created by other_tenant
            response = await client.get(f"/v1/projects/{theirs_id}", headers=auth(tenant))
            assert response.status_code == 404


async def test_the_tenant_registry_behind_pgbouncer_stays_on_its_ttl(
    bouncer_settings: Settings,
    bouncer_engine: AsyncEngine,
    engine: AsyncEngine,
    tenant: TenantRecord,
) -> None:
    """LISTEN cannot work through transaction pooling: notifications reach the server
    connection while no client is linked to it. The registry's pings come from another
    connection, so none comes back, and it never trusts an entry past its TTL."""
    registry = TenantRegistry(bouncer_engine, bouncer_settings)
    registry.start()
    try:
        assert await registry.get(tenant.slug) is not None
        await asyncio.sleep(1.5)  # six pings
        assert not registry.live
        assert registry.peek(tenant.slug) is UNKNOWN
        assert await registry.get(tenant.slug) is not None
        await service.update_tenant(engine, tenant.slug, status="suspended")
        await eventually(field_of(registry, tenant.slug, "status"), "suspended", within=1.0)
    finally:
        await registry.aclose()
