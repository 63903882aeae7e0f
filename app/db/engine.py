"""The one shared connection pool for every tenant."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.core.config import Settings


def build_engine(settings: Settings) -> AsyncEngine:
    return create_async_engine(
        settings.asyncpg_database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
        # Each backend caches catalog entries for every schema it touched; recycling bounds it.
        pool_recycle=settings.db_pool_recycle_seconds,
        pool_pre_ping=False,
        connect_args={
            "timeout": settings.db_connect_timeout_seconds,
            "command_timeout": settings.db_command_timeout_seconds,
            "statement_cache_size": settings.db_statement_cache_size,
            "server_settings": {"application_name": "tessera"},
        },
    )
