"""PostgreSQL going away under a running API: 503 `database_unavailable` within 5 s, never a
hang or a 500, and service again by itself when PostgreSQL is back (CONTRACT section 10)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import asyncpg
import pytest
from sqlalchemy import text

from app.api.problems import is_database_unavailable
from app.core.config import Settings
from app.db.connection_errors import ConnectionLost
from app.db.engine import build_engine
from app.db.pool import TenantConnections
from app.db.repositories.tenants import TenantRecord
from app.db.tenancy import TenantSchema
from tests.conftest import SERVER_URL, with_database
from tests.servers import Proxy
from tests.support import assert_problem, running_app

Headers = dict[str, str]


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    server = urlsplit(SERVER_URL)
    running = Proxy(server.hostname or "127.0.0.1", server.port or 5432)
    await running.start()
    yield running
    if running.server is not None and running.server.is_serving():
        await running.cut()


def through(proxy: Proxy, settings: Settings, database_name: str, **changes: object) -> Settings:
    """The session's settings, with PostgreSQL reached through `proxy`."""
    user = urlsplit(SERVER_URL).username or "postgres"
    url = with_database(f"postgresql://{user}@127.0.0.1:{proxy.port}/x", database_name)
    return settings.model_copy(update={"database_url": url, **changes})


async def test_api_answers_503_when_postgres_goes_away_and_recovers_by_itself(
    settings: Settings,
    database_name: str,
    tenant: TenantRecord,
    headers: Headers,
    proxy: Proxy,
) -> None:
    app_settings = through(proxy, settings, database_name)
    async with running_app(app_settings) as (_, client):
        created = await client.post("/v1/projects", json={"name": "before"}, headers=headers)
        assert created.status_code == 201
        url = f"/v1/projects/{created.json()['id']}"

        await client.get("/v1/projects?limit=3", headers=headers)  # pooled connections warm
        await proxy.cut()
        # At once: the tenant still comes from the in-process registry, so the request
        # meets a pooled connection that died under it.
        response = await client.post("/v1/projects", json={"name": "x"}, headers=headers)
        assert_problem(response, 503, "database_unavailable")
        await asyncio.sleep(1.0)  # past the tenant registry's in-process TTL
        for attempt in ("write", "list", "readyz"):
            started = time.monotonic()
            if attempt == "write":
                response = await client.post("/v1/projects", json={"name": "x"}, headers=headers)
                assert_problem(response, 503, "database_unavailable")
            elif attempt == "list":
                response = await client.get("/v1/projects?limit=7", headers=headers)
                assert_problem(response, 503, "database_unavailable")
            else:
                response = await client.get("/readyz")
                assert response.status_code == 503
            assert time.monotonic() - started < 5, attempt

        await proxy.start()  # PostgreSQL is back, on the same address
        deadline = time.monotonic() + 10
        while True:
            response = await client.get(url, headers=headers)
            if response.status_code == 200:
                break
            assert response.status_code == 503, response.text
            assert time.monotonic() < deadline, "no recovery within 10 s"
            await asyncio.sleep(0.2)
        again = await client.post("/v1/projects", json={"name": "after"}, headers=headers)
        assert again.status_code == 201
        assert (await client.get("/readyz")).status_code == 200


async def test_unreachable_database_from_the_start_is_503_not_500(
    settings: Settings, headers: Headers, tenant: TenantRecord
) -> None:
    closed = settings.model_copy(
        update={"database_url": "postgresql://postgres@127.0.0.1:1/nowhere"}
    )
    async with running_app(closed) as (_, client):
        started = time.monotonic()
        response = await client.get("/v1/projects", headers=headers)
        assert_problem(response, 503, "database_unavailable")
        assert time.monotonic() - started < 5


async def test_a_database_that_stops_answering_costs_a_503_within_5_s_not_a_hang(
    settings: Settings,
    database_name: str,
    tenant: TenantRecord,
    headers: Headers,
    proxy: Proxy,
) -> None:
    app_settings = through(proxy, settings, database_name, db_request_timeout_seconds=1.5)
    async with running_app(app_settings) as (_, client):
        assert (await client.post("/v1/projects", json={"name": "a"}, headers=headers)).is_success
        proxy.frozen = True
        for path in ("/v1/projects?limit=9", "/v1/projects?limit=8"):  # pooled, then after TTL
            started = time.monotonic()
            response = await client.get(path, headers=headers)
            assert_problem(response, 503, "database_unavailable")
            assert time.monotonic() - started < 5
            await asyncio.sleep(1.0)
        proxy.frozen = False
        deadline = time.monotonic() + 10
        while (
            await client.post("/v1/projects", json={"name": "b"}, headers=headers)
        ).status_code != 201:
            assert time.monotonic() < deadline, "no recovery within 10 s"
            await asyncio.sleep(0.2)


# PostgreSQL ends a session (pg_ctl -m fast, pg_terminate_backend, idle_session_timeout) by
# sending it a FATAL message and then closing the socket. Between the two, asyncpg holds the
# connection neither idle nor closed and refuses any statement on it ("cannot switch to state
# 15; another operation (2) is in progress"): the 500s of issue 15 while PostgreSQL
# restarted. The proxy's `linger` widens that moment from an event-loop turn to half a second.


async def backends_in_pool(
    connections: TenantConnections, tenant: TenantSchema, count: int
) -> set[int]:
    """Fill the pool with `count` connections (held at once), idle afterwards; their pids."""

    async def hold() -> int:
        async with connections.transaction(tenant) as session:
            pid = int(await session.scalar(text("SELECT pg_backend_pid()")))
            await asyncio.sleep(0.05)
            return pid

    return set(await asyncio.gather(*(hold() for _ in range(count))))


async def terminate(database_name: str, pids: set[int]) -> None:
    conn = await asyncpg.connect(with_database(SERVER_URL, database_name))
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) pid", list(pids)
        )
    finally:
        await conn.close()


@pytest.fixture
async def lingering(
    settings: Settings, database_name: str, proxy: Proxy
) -> AsyncIterator[TenantConnections]:
    """Three pooled connections through a proxy that hangs up late."""
    proxy.linger = 0.5
    engine = build_engine(
        through(proxy, settings, database_name, db_pool_size=3, db_max_overflow=0)
    )
    connections = TenantConnections(engine)
    yield connections
    await connections.aclose()
    await engine.dispose()


async def test_pooled_connections_the_server_ended_are_replaced_before_use_never_refused(
    database_name: str, tenant: TenantRecord, lingering: TenantConnections
) -> None:
    location = TenantSchema(schema=tenant.schema, role=tenant.db_role)
    ended = await backends_in_pool(lingering, location, 3)
    await terminate(database_name, ended)
    await asyncio.sleep(0.1)  # their FATAL messages are in; the sockets close in 0.4 s
    # Each transaction gets a connection proven good, none of the three ended ones.
    serving = await backends_in_pool(lingering, location, 3)
    assert len(serving) == 3
    assert not serving & ended


async def test_a_transaction_whose_session_the_server_ended_fails_as_a_lost_connection(
    database_name: str, tenant: TenantRecord, lingering: TenantConnections
) -> None:
    location = TenantSchema(schema=tenant.schema, role=tenant.db_role)
    with pytest.raises(ConnectionLost) as lost:
        async with lingering.transaction(location) as session:
            pid = int(await session.scalar(text("SELECT pg_backend_pid()")))
            await terminate(database_name, {pid})
            await asyncio.sleep(0.1)  # the FATAL message is in, the socket not yet closed
            await session.execute(text("SELECT 1"))
    assert is_database_unavailable(lost.value)  # answered 503 database_unavailable
    # The pool holds nothing of it: the next transaction runs at once, on a new session.
    async with lingering.transaction(location) as session:
        assert int(await session.scalar(text("SELECT pg_backend_pid()"))) != pid
