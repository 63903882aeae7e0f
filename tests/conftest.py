"""Test fixtures: a fresh PostgreSQL database per session, real Redis, the app over ASGI, and a
real token issuer (the dev issuer) served over HTTP on a loopback port."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
import uvicorn
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.config import Settings
from app.db.engine import build_engine
from app.db.migrate import migrate_shared
from app.db.pool import TenantConnections
from app.db.repositories.tenants import TenantRecord
from app.devissuer import DevIssuer
from app.main import create_app
from app.services.provisioning import create_tenant
from tests.factories import make_tenant
from tests.redis_layer.redis_servers import RestartableRedis
from tests.support import running_app

SERVER_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


def run_in_own_loop(coroutine: Coroutine[Any, Any, None]) -> None:
    """asyncio.run in a thread of its own. This session fixture may first be needed in the
    middle of a run (say, by the one test of tests/redis_layer that uses the database),
    when asyncio.run on the main thread would unset pytest-asyncio's event loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, coroutine).result()


@pytest.fixture(scope="session")
def database_name() -> Iterator[str]:
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

    run_in_own_loop(create())
    yield name
    run_in_own_loop(drop())
    run_in_own_loop(_drop_test_roles())


@pytest.fixture(scope="session")
def database_url(database_name: str) -> str:
    return with_database(SERVER_URL, database_name)


ROLE_PREFIX = f"t{uuid.uuid4().hex[:6]}_"


class CountingApp:
    """Wraps an ASGI app and counts requests by path, so tests can assert outbound calls."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.hits: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.hits[scope["path"]] += 1
        await self.app(scope, receive, send)


class ServedApp:
    """An ASGI app served by uvicorn over real HTTP on a free loopback port, in a thread."""

    def __init__(self) -> None:
        # Bound before the app exists, so the app can be told its own URL (the issuer's `iss`).
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, app: ASGIApp, *, lifespan: str = "off") -> None:
        """Serve `app`; with lifespan="on" its startup has run (and failed loudly) on return."""
        config = uvicorn.Config(
            app, lifespan=lifespan, log_level="warning", ws="none", http="h11", access_log=False
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        """Stop serving: the port then refuses connections, as a downed issuer would."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            self._server = None
        self.sock.close()


class RunningIssuer:
    """The dev issuer served over HTTP, with its requests counted by path."""

    def __init__(self, key_dir: Path) -> None:
        self.server = ServedApp()
        self.url = self.server.url
        self.dev = DevIssuer(Settings(environment="test"), key_dir=key_dir, issuer=self.url)
        self.app = CountingApp(self.dev.asgi_app())
        self.server.start(self.app)

    @property
    def jwks_fetches(self) -> int:
        return self.app.hits["/jwks.json"]

    @property
    def requests(self) -> int:
        return sum(self.app.hits.values())

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture(scope="session")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningIssuer]:
    running = RunningIssuer(tmp_path_factory.mktemp("dev-issuer"))
    yield running
    running.stop()


@pytest.fixture
def start_issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], RunningIssuer]]:
    """A factory of private issuers (own keys, own port) for tests that rotate or stop them."""
    started: list[RunningIssuer] = []

    def start() -> RunningIssuer:
        running = RunningIssuer(tmp_path_factory.mktemp("dev-issuer"))
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


MakeToken = Callable[..., str]


@pytest.fixture(scope="session")
def make_token(issuer: RunningIssuer) -> MakeToken:
    """`make_token(tenant="acme", scopes="api:read api:write", **claims)`: a signed token.

    `sub` defaults to "test-user"; `alg` ("RS256"/"ES256") and `ttl` pass through to the
    issuer; any other keyword is a claim (overriding the standard ones).
    """

    def make(
        tenant: str | None = "acme",
        scopes: str | Iterable[str] = "api:read api:write",
        **claims: Any,
    ) -> str:
        subject = claims.pop("sub", "test-user")
        alg = claims.pop("alg", "RS256")
        ttl = claims.pop("ttl", 3600)
        return issuer.dev.mint(subject, tenant=tenant, scopes=scopes, ttl=ttl, alg=alg, **claims)

    return make


@pytest.fixture(scope="session")
def settings(database_url: str, issuer: RunningIssuer) -> Settings:
    return Settings(
        environment="test",
        database_url=database_url,
        redis_url=REDIS_URL,
        log_level="WARNING",
        db_pool_size=5,
        db_tenant_role_prefix=ROLE_PREFIX,
        auth_issuer=issuer.url,
        # DELETE purges at once here, so tests that delete leave nothing behind; the grace
        # period has its own tests (tests/integration/test_tenant_lifecycle.py).
        tenant_purge_grace_seconds=0,
    )


@pytest.fixture(scope="session")
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """The session database, migrated once (shared schema)."""
    eng = build_engine(settings)
    await migrate_shared(eng)
    yield eng
    await eng.dispose()


@pytest.fixture(scope="session")
async def connections(engine: AsyncEngine) -> AsyncIterator[TenantConnections]:
    """The request path's connections over the session engine (tests/support.py, direct
    tenant transactions)."""
    conns = TenantConnections(engine)
    yield conns
    await conns.aclose()


async def _drop_test_roles() -> None:
    # Roles are cluster-wide: drop the ones this session created (the database goes too).
    conn = await asyncpg.connect(SERVER_URL)
    try:
        roles = [
            row["rolname"]
            for row in await conn.fetch(
                "SELECT rolname FROM pg_roles WHERE rolname LIKE $1", ROLE_PREFIX + "%"
            )
        ]
        # A few hundred statements of one each took most of the session's teardown.
        for start in range(0, len(roles), 500):
            names = ", ".join(f'"{name}"' for name in roles[start : start + 500])
            await conn.execute(f"DROP ROLE IF EXISTS {names}")
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


@pytest.fixture
async def second_client(settings: Settings, app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Another replica beside `app`: its own pool, Redis client, registry and cache process
    state, sharing the database and Redis, as two pods behind one load balancer do."""
    async with running_app(settings) as (_, replica):
        yield replica


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
def admin(make_token: MakeToken) -> Headers:
    """The Authorization header of a platform admin (no tenant claim)."""
    return {"Authorization": "Bearer " + make_token(tenant=None, scopes="platform:admin")}


@pytest.fixture
async def other_tenant(engine: AsyncEngine, settings: Settings) -> TenantRecord:
    return await make_tenant(engine, settings)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RestartableRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH")
    server = RestartableRedis(tmp_path)
    yield server
    server.stop()
