"""Tenant isolation through PgBouncer in transaction mode, the pooler managed PostgreSQL
setups put in front: server connections are shared between clients transaction by
transaction, so anything session-level would leak between tenants."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
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
from tests.servers import ROOT, app_environment, free_port, stop, wait_for
from tests.support import eventually

PGBOUNCER = shutil.which("pgbouncer") or (
    "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
)
pytestmark = pytest.mark.skipif(PGBOUNCER is None, reason="pgbouncer is not installed")


@dataclass(frozen=True)
class PgBouncer:
    port: int
    log: Path


@contextmanager
def running_pgbouncer() -> Iterator[PgBouncer]:
    """A PgBouncer of its own in transaction mode, one server connection per database."""
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
    try:
        yield PgBouncer(port, workdir / "pgbouncer.log")
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def pgbouncer() -> Iterator[PgBouncer]:
    with running_pgbouncer() as bouncer:
        yield bouncer


@pytest.fixture(scope="module")
def bouncer_settings(settings: Settings, pgbouncer: PgBouncer, database_name: str) -> Settings:
    return through(pgbouncer, settings, database_name)


def through(pgbouncer: PgBouncer, settings: Settings, database_name: str) -> Settings:
    server = urlsplit(SERVER_URL)
    url = f"postgresql://{server.username or 'postgres'}@127.0.0.1:{pgbouncer.port}/{database_name}"
    # The one documented setting PgBouncer in transaction mode needs (README, Configuration).
    return settings.model_copy(
        update={"database_url": url, "database_pooler": "transaction", "db_pool_size": 4}
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
    connection while no client is linked to it. Told it is behind one
    (DATABASE_POOLER=transaction) the registry does not LISTEN, and it never trusts an
    entry past its TTL; not told, it LISTENs, no ping comes back, and the same holds."""
    for told in (True, False):
        pooler = "transaction" if told else "none"
        config = bouncer_settings.model_copy(update={"database_pooler": pooler})
        await suspend_reaches_a_registry_within_its_ttl(config, bouncer_engine, engine, tenant)


async def suspend_reaches_a_registry_within_its_ttl(
    bouncer_settings: Settings, bouncer_engine: AsyncEngine, engine: AsyncEngine, tenant: Any
) -> None:
    await service.update_tenant(engine, tenant.slug, status="active")
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


# --- two API processes through PgBouncer: how fast a suspend reaches both ---------------

SERVED_STARTUP_SECONDS = 60.0  # four processes importing at once on a shared CI box
REGISTRY_APPLICATION = "tessera-registry"
ROUNDS = 2  # suspends per setup
Headers = dict[str, str]


@contextmanager
def served_through_pgbouncer(
    bouncer_settings: Settings, *setups: dict[str, str], per_setup: int = 2
) -> Iterator[list[list[str]]]:
    """`per_setup` Tessera processes (uvicorn) for each setup (extra environment) on
    `bouncer_settings`, all started at once; yields their base URLs by setup."""
    with ExitStack() as stack:
        servers: list[list[tuple[subprocess.Popen[bytes], str]]] = []
        for extra in setups:
            environment = app_environment(
                bouncer_settings,
                AUTH_ISSUER=bouncer_settings.auth_issuer,
                DB_TENANT_ROLE_PREFIX=bouncer_settings.db_tenant_role_prefix,
                DATABASE_POOLER=bouncer_settings.database_pooler,
                DB_POOL_SIZE=str(bouncer_settings.db_pool_size),
                # The suspend rounds poll as fast as the processes answer: a busy machine's
                # rounds would otherwise reach the default 600/minute and get a 429.
                RATE_LIMIT_DEFAULT="1000000/minute",
                **extra,
            )
            group = []
            for _ in range(per_setup):
                port = free_port()
                process = subprocess.Popen(
                    [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port)],
                    cwd=ROOT,
                    env=environment,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                stack.callback(stop, process)
                group.append((process, f"http://127.0.0.1:{port}"))
            servers.append(group)
        for group in servers:
            for process, base in group:
                wait_for(base + "/healthz", timeout=SERVED_STARTUP_SECONDS, process=process)
        yield [[base for _, base in group] for group in servers]


async def suspend_until_refused(
    client: httpx.AsyncClient, bases: list[str], tokens: tuple[Headers, Headers], slug: str
) -> list[float]:
    """Suspend the tenant through the first process; how long, from the committed answer,
    until each process refuses the tenant's token. Every process keeps serving the tenant
    beforehand, as a busy tenant would, so nothing waits for a cold entry."""
    admin, auth = tokens

    async def status(base: str) -> int:
        return (await client.get(f"{base}/v1/tenant", headers=auth)).status_code

    for base in bases:
        await eventually(partial(status, base), 200, within=2.0)  # the last round's resume
        for _ in range(5):
            assert await status(base) == 200
    suspended = await client.post(f"{bases[0]}/admin/v1/tenants/{slug}/suspend", headers=admin)
    assert suspended.status_code == 200, suspended.text
    committed = time.monotonic()

    async def until_refused(base: str) -> float:
        while True:
            response = await client.get(f"{base}/v1/tenant", headers=auth)
            if response.status_code == 403:
                assert response.json()["code"] == "tenant_suspended"
                return time.monotonic() - committed
            assert response.status_code == 200, response.text
            assert time.monotonic() - committed < 2.0, "suspend not in force after 2 s"

    seconds = await asyncio.gather(*(until_refused(base) for base in bases))
    resumed = await client.post(f"{bases[0]}/admin/v1/tenants/{slug}/resume", headers=admin)
    assert resumed.status_code == 200, resumed.text
    return list(seconds)


async def registry_connections(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        found = await conn.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = :name AND datname = current_database()"
            ),
            {"name": REGISTRY_APPLICATION},
        )
    return int(found or 0)


async def test_a_suspend_reaches_two_processes_behind_pgbouncer_by_notification_with_a_direct_url(
    settings: Settings,
    database_name: str,
    engine: AsyncEngine,
    tenant: TenantRecord,
    make_token: MakeToken,
) -> None:
    """DATABASE_LISTEN_URL (PostgreSQL itself) gives processes behind a transaction pooler
    their change notifications back: a suspend is in force at once. Without it they do not
    LISTEN (nothing leaks through the pooler) and a suspend takes up to the registry's TTL."""
    admin = {"Authorization": "Bearer " + make_token(tenant=None, scopes="platform:admin")}
    auth = {"Authorization": "Bearer " + make_token(tenant=tenant.slug, scopes="api:read")}
    tokens, slug = (admin, auth), tenant.slug
    ttl = settings.tenant_registry_ttl_seconds
    setups = ({"DATABASE_LISTEN_URL": settings.database_url}, {})
    # A PgBouncer of its own: one whose server connections never LISTENed (a leaked LISTEN
    # stays on its server connection for good).
    # Registry connections of other apps (this session's own) on the database already.
    others = await registry_connections(engine)
    with (
        running_pgbouncer() as pgbouncer,
        served_through_pgbouncer(through(pgbouncer, settings, database_name), *setups) as (
            direct,
            pooled,
        ),
    ):
        async with httpx.AsyncClient(timeout=5) as client:
            # A listener and its pinger per process given the direct URL, on PostgreSQL
            # itself; none from the others.
            expected = others + 2 * len(direct)
            await eventually(partial(registry_connections, engine), expected, within=10)
            await asyncio.sleep(ttl + 0.2)  # pings proven: entries outlive the TTL
            with_direct, ttl_only = [], []
            for _ in range(ROUNDS):
                with_direct.append(await suspend_until_refused(client, direct, tokens, slug))
                ttl_only.append(await suspend_until_refused(client, pooled, tokens, slug))
            assert await registry_connections(engine) == expected
        log = pgbouncer.log.read_text()  # before its directory goes
    print(
        "\nsuspend in force, seconds after its commit, per round and process:"
        f"\n  with DATABASE_LISTEN_URL: {[[round(s, 3) for s in r] for r in with_direct]}"
        f"\n  through PgBouncer alone (TTL {ttl} s): {[[round(s, 3) for s in r] for r in ttl_only]}"
    )
    assert max(max(run) for run in with_direct) < 0.25
    assert max(max(run) for run in ttl_only) < 1.0
    assert "when not linked" not in log, log
