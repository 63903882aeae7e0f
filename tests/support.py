"""Assertions, direct reads and extra app instances shared by the tenant API tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.db.pool import TenantConnections
from app.db.repositories.tenants import TenantRecord
from app.db.tenancy import TenantSchema
from app.main import create_app


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """A Tessera app of its own (lifespan run: pool, Redis client, registry, cache) and a
    client that calls it over ASGI."""
    application = create_app(settings)
    async with LifespanManager(application):
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield application, client


async def count_rows(engine: AsyncEngine, tenant: TenantRecord, table: str) -> int:
    """Rows in one of the tenant's tables, read through the same pinning as a request."""
    location = TenantSchema(schema=tenant.schema, role=tenant.db_role)
    async with TenantConnections(engine).transaction(location) as conn:
        return int(await conn.scalar(text(f"SELECT count(*) FROM {table}")) or 0)


async def add_trigger(engine: AsyncEngine, schema: str, name: str, body: str, trigger: str) -> None:
    """A PL/pgSQL trigger function `<schema>.<name>()` running `body`, and the trigger that
    calls it: `trigger`, its CREATE statement, with `{function}` for the function."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                f"CREATE FUNCTION {schema}.{name}() RETURNS trigger "
                f"LANGUAGE plpgsql AS $$ BEGIN {body} END $$"
            )
        )
        await conn.execute(text(trigger.format(function=f"{schema}.{name}()")))


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    return body


async def eventually(
    probe: Callable[[], Awaitable[object]], expected: object, within: float
) -> None:
    """Wait until `probe()` answers `expected`; fail after `within` seconds."""
    started = time.monotonic()
    while (found := await probe()) != expected:
        elapsed = time.monotonic() - started
        assert elapsed < within, f"still {found!r} after {elapsed:.2f} s"
        await asyncio.sleep(0.01)
