"""Fair share of the pool (docs/decisions/0026): a tenant runs at most its plan's number of
transactions at once on a replica, waits a bounded time for a slot, then gets 429
`tenant_busy`; its statements end at its statement timeout with 503 `statement_timeout`.

Requests are made slow for real: a side connection (the database owner) holds a lock that
the tenant's statements wait on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.db.engine import build_engine
from app.db.fair_share import TenantShare
from app.db.pool import TenantConnections
from app.db.repositories.tenants import TenantRecord
from app.db.tenancy import TenantSchema
from tests.factories import make_tenant, post_project
from tests.metrics_support import parse_samples, value
from tests.support import add_trigger, assert_problem, eventually, running_app

Headers = dict[str, str]


@asynccontextmanager
async def app_with(
    settings: Settings, **changes: Any
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with running_app(settings.model_copy(update=changes)) as (application, client):
        yield application, client


@asynccontextmanager
async def locked(database_url: str, statement: str) -> AsyncIterator[asyncpg.Connection]:
    """`statement` run in a transaction of a side connection, held open until the block ends."""
    conn = await asyncpg.connect(database_url)
    try:
        transaction = conn.transaction()
        await transaction.start()
        await conn.execute(statement)
        try:
            yield conn
        finally:
            await transaction.rollback()
    finally:
        await conn.close()


async def waiting_on_locks(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
    finally:
        await conn.close()


def row_lock(tenant: TenantRecord, project_id: str) -> str:
    return f"SELECT 1 FROM \"{tenant.schema}\".projects WHERE id = '{project_id}' FOR UPDATE"


def patch(client: httpx.AsyncClient, headers: Headers, project_id: str) -> asyncio.Task[Any]:
    return asyncio.create_task(
        client.patch(f"/v1/projects/{project_id}", json={"name": "renamed"}, headers=headers)
    )


async def busy_rejections(client: httpx.AsyncClient, slug: str) -> float:
    samples = parse_samples((await client.get("/metrics")).text)
    return value(samples, "tessera_tenant_busy_rejections_total", tenant=slug)


async def test_a_flooding_tenant_gets_429_tenant_busy_while_another_tenant_answers(
    settings: Settings,
    database_url: str,
    engine: AsyncEngine,
    auth: Callable[..., Headers],
) -> None:
    # A pool of 3 connections, and a share of 2: A can never take the last one from B.
    async with app_with(
        settings,
        db_pool_size=2,
        db_max_overflow=1,
        db_pool_timeout_seconds=5,
        tenant_max_concurrent_transactions=2,
        tenant_busy_wait_seconds=0.3,
        tenant_statement_timeout_ms=0,
    ) as (application, client):
        a, b = await make_tenant(engine, settings), await make_tenant(engine, settings)
        a_headers, b_headers = auth(a), auth(b)
        a_project = (await post_project(client, a_headers))["id"]
        await post_project(client, b_headers)  # B's tenant and token known to the replica
        slots = application.state.connections.slots
        rejected_before = await busy_rejections(client, a.slug)

        async with locked(database_url, row_lock(a, a_project)):
            slow = [patch(client, a_headers, a_project) for _ in range(2)]
            await eventually(lambda: waiting_on_locks(database_url), 2, within=10)
            assert slots.in_use(a.slug) == 2

            started = time.monotonic()
            refused = await client.post("/v1/projects", json={"name": "x"}, headers=a_headers)
            waited = time.monotonic() - started
            assert_problem(refused, 429, "tenant_busy")
            assert refused.headers["Retry-After"] == "1"
            assert waited >= 0.15  # half the wait at least (spread at random, see TenantSlots)

            started = time.monotonic()
            served = await client.post("/v1/projects", json={"name": "b"}, headers=b_headers)
            listed = await client.get("/v1/projects?limit=5", headers=b_headers)
            assert served.status_code == 201, served.text
            assert listed.status_code == 200, listed.text
            # Queued behind A, B would wait for the lock's end (or the pool's 5 s timeout).
            assert time.monotonic() - started < 2.5
            assert not any(task.done() for task in slow)

        assert [(await task).status_code for task in slow] == [200, 200]
        assert slots.in_use(a.slug) == 0
        after = await client.post("/v1/projects", json={"name": "again"}, headers=a_headers)
        assert after.status_code == 201, after.text
        assert await busy_rejections(client, a.slug) == rejected_before + 1


async def test_waiters_of_a_tenant_are_served_in_turn_when_slots_free_up(
    settings: Settings, database_url: str, engine: AsyncEngine, auth: Callable[..., Headers]
) -> None:
    async with app_with(
        settings,
        tenant_max_concurrent_transactions=1,
        tenant_busy_wait_seconds=5,
        tenant_statement_timeout_ms=0,
    ) as (application, client):
        a = await make_tenant(engine, settings)
        headers = auth(a)
        project = (await post_project(client, headers))["id"]
        async with locked(database_url, row_lock(a, project)):
            holder = patch(client, headers, project)
            await eventually(lambda: waiting_on_locks(database_url), 1, within=10)
            waiters = [
                asyncio.create_task(
                    client.post("/v1/projects", json={"name": f"w{n}"}, headers=headers)
                )
                for n in range(3)
            ]
            await asyncio.sleep(0.2)
            assert not any(task.done() for task in waiters)  # waiting for A's one slot
        answers = [await task for task in (holder, *waiters)]
        assert [r.status_code for r in answers] == [200, 201, 201, 201]
        assert application.state.connections.slots.in_use(a.slug) == 0


async def test_with_fair_share_off_a_flooding_tenant_is_never_refused_and_fills_the_pool(
    settings: Settings, database_url: str, engine: AsyncEngine, auth: Callable[..., Headers]
) -> None:
    async with app_with(
        settings,
        db_pool_size=2,
        db_max_overflow=0,
        db_pool_timeout_seconds=0.5,
        fair_share_enabled=False,
        tenant_max_concurrent_transactions=1,
        tenant_statement_timeout_ms=0,
    ) as (application, client):
        assert application.state.connections.slots is None
        a, b = await make_tenant(engine, settings), await make_tenant(engine, settings)
        a_headers, b_headers = auth(a), auth(b)
        a_project = (await post_project(client, a_headers))["id"]
        await post_project(client, b_headers)
        await asyncio.sleep(0.1)  # past PARK_SECONDS: nothing parked
        async with locked(database_url, row_lock(a, a_project)):
            slow = [patch(client, a_headers, a_project) for _ in range(2)]
            await eventually(lambda: waiting_on_locks(database_url), 2, within=10)
            # B queues on the shared pool behind A, and gives up there.
            starved = await client.post("/v1/projects", json={"name": "b"}, headers=b_headers)
            assert_problem(starved, 503, "database_unavailable")
        assert [(await task).status_code for task in slow] == [200, 200]


async def test_a_statement_past_the_tenant_statement_timeout_answers_503_and_the_pool_recovers(
    settings: Settings, database_url: str, engine: AsyncEngine, auth: Callable[..., Headers]
) -> None:
    async with app_with(settings, tenant_statement_timeout_ms=200) as (application, client):
        a = await make_tenant(engine, settings)
        headers = auth(a)
        project = (await post_project(client, headers))["id"]

        async with locked(database_url, row_lock(a, project)):
            started = time.monotonic()
            cancelled = await client.patch(
                f"/v1/projects/{project}", json={"name": "renamed"}, headers=headers
            )
            assert time.monotonic() - started < 2.0
        body = assert_problem(cancelled, 503, "statement_timeout")
        assert cancelled.headers["Retry-After"] == "1"
        assert "SELECT" not in str(body["detail"]) and a.schema not in cancelled.text

        # The cached read's load (before routing) ends the same way, waiting on a table lock.
        table_lock = f'LOCK TABLE "{a.schema}".projects IN ACCESS EXCLUSIVE MODE'
        async with locked(database_url, table_lock):
            read = await client.get(f"/v1/projects/{project}", headers=headers)
        assert_problem(read, 503, "statement_timeout")

        renamed = await client.patch(
            f"/v1/projects/{project}", json={"name": "renamed"}, headers=headers
        )
        assert renamed.status_code == 200, renamed.text
        assert renamed.json()["version"] == 2  # the cancelled PATCH changed nothing
        pool = application.state.engine.sync_engine.pool
        await eventually(lambda: _checked_out(pool), 0, within=2)
        assert application.state.connections.slots.in_use(a.slug) == 0


async def test_a_key_claim_past_the_statement_timeout_answers_503_and_leaves_the_key_free(
    settings: Settings, database_url: str, engine: AsyncEngine, auth: Callable[..., Headers]
) -> None:
    """The claim of an Idempotency-Key rides in the BEGIN's round trip (decision 0031): when
    it waits past the tenant's statement timeout (here on the key's row, inserted and not
    committed by a side connection), the request answers 503 as any statement would, and
    the key is free once the side connection is gone."""
    async with app_with(settings, tenant_statement_timeout_ms=200) as (application, client):
        a = await make_tenant(engine, settings)
        keyed = {**auth(a), "Idempotency-Key": "held"}
        held = (
            f'INSERT INTO "{a.schema}".idempotency_keys (key, request_hash, state, expires_at) '
            "VALUES ('held', 'h', 'in_progress', now() + interval '1 hour')"
        )
        async with locked(database_url, held):
            started = time.monotonic()
            cancelled = await client.post("/v1/projects", json={"name": "n"}, headers=keyed)
            assert time.monotonic() - started < 2.0
        assert_problem(cancelled, 503, "statement_timeout")
        assert cancelled.headers["Retry-After"] == "1"
        created = await client.post("/v1/projects", json={"name": "n"}, headers=keyed)
        assert created.status_code == 201, created.text
        assert "idempotent-replayed" not in created.headers
        pool = application.state.engine.sync_engine.pool
        await eventually(lambda: _checked_out(pool), 0, within=2)
        assert application.state.connections.slots.in_use(a.slug) == 0


async def test_a_save_with_the_commit_past_the_statement_timeout_answers_503_keeps_nothing(
    settings: Settings, engine: AsyncEngine, auth: Callable[..., Headers]
) -> None:
    """The idempotency save rides in the COMMIT's round trip (decision 0030) and is held to
    the tenant's statement timeout like any statement (here a trigger makes it slow): 503
    `statement_timeout`, not a failed COMMIT's 500, and nothing of the request is kept, its
    Idempotency-Key free. (PostgreSQL does not time the COMMIT itself.)"""
    async with app_with(settings, tenant_statement_timeout_ms=200) as (application, client):
        a = await make_tenant(engine, settings)
        headers = auth(a)
        schema = f'"{a.schema}"'
        await add_trigger(
            engine,
            schema,
            "slow_save",
            "PERFORM pg_sleep(5); RETURN NEW;",
            f"CREATE TRIGGER slow_save BEFORE UPDATE ON {schema}.idempotency_keys "
            "FOR EACH ROW EXECUTE FUNCTION {function}",
        )
        keyed = {**headers, "Idempotency-Key": "at-commit"}
        started = time.monotonic()
        cancelled = await client.post("/v1/projects", json={"name": "n"}, headers=keyed)
        assert time.monotonic() - started < 2.0
        assert_problem(cancelled, 503, "statement_timeout")
        assert cancelled.headers["Retry-After"] == "1"
        async with engine.begin() as conn:
            for table in ("projects", "audit_events", "idempotency_keys"):
                rows = await conn.scalar(text(f"SELECT count(*) FROM {schema}.{table}"))
                assert rows == 0, table
            await conn.execute(text(f"DROP TRIGGER slow_save ON {schema}.idempotency_keys"))
        created = await client.post("/v1/projects", json={"name": "n"}, headers=keyed)
        assert created.status_code == 201 and "idempotent-replayed" not in created.headers
        pool = application.state.engine.sync_engine.pool
        await eventually(lambda: _checked_out(pool), 0, within=2)


async def _checked_out(pool: Any) -> int:
    return int(pool.checkedout())


async def test_the_statement_timeout_is_set_in_the_pin_and_ends_with_the_transaction(
    settings: Settings, tenant: TenantRecord
) -> None:
    # One pooled connection, so both transactions run on the same backend.
    engine = build_engine(settings.model_copy(update={"db_pool_size": 1, "db_max_overflow": 0}))
    one = TenantConnections(engine)
    location = TenantSchema(schema=tenant.schema, role=tenant.db_role)
    show = text("SHOW statement_timeout")
    try:
        async with one.transaction(location, share=TenantShare(tenant.slug, None, 1234)) as conn:
            assert await conn.scalar(show) == "1234ms"
        async with one.transaction(location) as conn:
            assert await conn.scalar(show) == "0"
    finally:
        await one.aclose()
        await engine.dispose()
