"""PostgreSQL going away under a running API: 503 `database_unavailable` within 5 s, never a
hang or a 500, and service again by itself when PostgreSQL is back (CONTRACT section 10)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from app.core.config import Settings
from app.db.repositories.tenants import TenantRecord
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
