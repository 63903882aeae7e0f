"""The one shared connection pool for every tenant, and the connections kept outside it."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.core.config import Settings


def _unique_statement_name() -> str:
    return f"__asyncpg_{uuid.uuid4().hex}__"


def build_engine(settings: Settings) -> AsyncEngine:
    connect_args: dict[str, Any] = {
        "timeout": settings.db_connect_timeout_seconds,
        "command_timeout": settings.db_command_timeout_seconds,
        # asyncpg's and SQLAlchemy's prepared-statement caches follow one setting.
        "statement_cache_size": settings.statement_cache_size,
        "prepared_statement_cache_size": settings.statement_cache_size,
        "server_settings": {"application_name": "tessera"},
    }
    if settings.statement_cache_size == 0:
        # Behind PgBouncer in transaction mode server connections are shared: statement
        # names must never collide between clients (SQLAlchemy's documented recipe).
        connect_args["prepared_statement_name_func"] = _unique_statement_name
    engine = create_async_engine(
        settings.asyncpg_database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
        # Each backend caches catalog entries for every schema it touched; recycling bounds it.
        pool_recycle=settings.db_pool_recycle_seconds,
        pool_pre_ping=False,
        connect_args=connect_args,
    )
    return engine


async def connect_outside_pool(
    settings: Settings, application_name: str, *, dsn: str | None = None
) -> asyncpg.Connection:
    """A dedicated asyncpg connection to the pool's database (or `dsn`), for work that must
    not hold a pooled connection (the tenant registry's change listener). It prepares no
    statements, so it works through PgBouncer as well."""
    return await asyncpg.connect(
        dsn or settings.dsn,
        timeout=settings.db_connect_timeout_seconds,
        command_timeout=settings.db_request_timeout_seconds,
        statement_cache_size=0,
        server_settings={"application_name": application_name},
    )
