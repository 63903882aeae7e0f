"""Schema migrations: the shared `platform` schema, then every tenant schema as a fleet.

Alembic's script directories are loaded once and applied through `EnvironmentContext`
directly, so a fleet run costs one Alembic boot, not one per tenant; one registry query
decides which tenants are behind, so a no-op run over thousands of tenants is instant.
"""

from __future__ import annotations

import asyncio
import io
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, func, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.schema import CreateTable

from app.db.citus import KEEP_SCHEMA_LOCAL_SQL
from app.db.models.base import PLATFORM_SCHEMA, shared_metadata, tenant_metadata
from app.db.models.shared import tenants
from app.db.tenancy import pin_schema_as_owner, quote_ident, run_script

logger = logging.getLogger("tessera.migrate")

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent.parent / "migrations"
SHARED_DIR = MIGRATIONS_DIR / "shared"
TENANT_DIR = MIGRATIONS_DIR / "tenant"
TEMPLATE_SCHEMA = "tenant_template"


def load_script(directory: Path) -> ScriptDirectory:
    config = Config()
    config.set_main_option("script_location", str(directory))
    return ScriptDirectory.from_config(config)


@lru_cache(maxsize=1)
def tenant_script() -> ScriptDirectory:
    """The tenant migrations this process ships with (TENANT_DIR), read once: reading them
    means importing every revision file, which provisioning must not pay per tenant as the
    history grows. (A benchmark that swaps TENANT_DIR calls `tenant_script.cache_clear()`.)"""
    return load_script(TENANT_DIR)


def _upgrade_sync(
    conn: Connection,
    script: ScriptDirectory,
    version_table_schema: str,
    metadata: MetaData,
) -> None:
    """Apply every pending revision of `script` inside the connection's open transaction."""
    head = script.get_current_head() or "base"
    config = Config()
    config.set_main_option("script_location", script.dir)

    def upgrade(rev: Any, context: MigrationContext) -> Any:
        return script._upgrade_revs(head, rev)  # noqa: SLF001 (Alembic's own upgrade walk)

    with EnvironmentContext(config, script, fn=upgrade, destination_rev=head) as env:
        env.configure(
            connection=conn,
            target_metadata=metadata,
            version_table_schema=version_table_schema,
        )
        env.run_migrations()


@lru_cache(maxsize=1)
def tenant_stamp_sql() -> tuple[str, ...]:
    """What stamping a schema built from the models at head takes, as SQL rendered once
    (Alembic's offline mode and its own version table): it runs in provisioning's round trip.
    Unqualified, so it lands in the schema the transaction is pinned to."""
    buffer = io.StringIO()
    context = MigrationContext.configure(
        dialect_name="postgresql", opts={"as_sql": True, "output_buffer": buffer}
    )
    version_table = context._version  # noqa: SLF001 (Alembic's definition of its table)
    create = str(CreateTable(version_table).compile(dialect=context.dialect)).strip()
    context.stamp(tenant_script(), "head")
    return (create, buffer.getvalue().strip().rstrip(";"))


async def lock(conn: AsyncConnection, name: str) -> None:
    """A transaction-scoped advisory lock: one migrator per schema at a time."""
    await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": name})


async def migrate_shared(engine: AsyncEngine) -> str | None:
    """Bring the `platform` schema to head; idempotent, safe to run from many replicas."""
    script = load_script(SHARED_DIR)
    async with engine.begin() as conn:
        await lock(conn, "tessera.migrate.shared")
        await conn.execute(text(KEEP_SCHEMA_LOCAL_SQL))  # on Citus, platform stays local
        await conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(PLATFORM_SCHEMA)}"))
        await conn.run_sync(_upgrade_sync, script, PLATFORM_SCHEMA, shared_metadata)
    return script.get_current_head()


def render_tenant_sql(
    script: ScriptDirectory, from_rev: str | None, to_rev: str | None = None
) -> tuple[str, ...]:
    """The SQL statements that take one tenant schema from `from_rev` to `to_rev` (head by
    default; an imported archive's tables are first built at its own revision), rendered once.

    Tenant tables are never schema-qualified, so the same text serves every tenant: it runs
    in the tenant schema the transaction is pinned to. Rendering (Alembic's offline mode)
    happens once per starting revision, not once per tenant, and Alembic's process-global
    context is never entered concurrently. Tenant migrations must therefore be expressible
    as SQL (DDL and data statements), which is what Alembic's `--sql` mode requires anyway.
    Alembic writes each statement to the buffer in one call, so they are kept apart: a
    Citus coordinator needs some of them sent on their own (`tenancy.run_script`).
    """
    key = (script.dir, from_rev, to_rev)
    cached = _rendered.get(key)
    if cached is not None:
        return cached
    head = to_rev or script.get_current_head() or "base"
    buffer = _StatementBuffer()
    config = Config(output_buffer=buffer)
    config.set_main_option("script_location", script.dir)

    def upgrade(rev: Any, context: MigrationContext) -> Any:
        return script._upgrade_revs(head, rev)  # noqa: SLF001 (Alembic's own upgrade walk)

    with EnvironmentContext(
        config,
        script,
        fn=upgrade,
        as_sql=True,
        starting_rev=from_rev,
        destination_rev=head,
    ) as env:
        env.configure(
            dialect_name="postgresql",
            output_buffer=buffer,
            target_metadata=tenant_metadata,
            transactional_ddl=False,
        )
        env.run_migrations()
    statements = buffer.statements()
    _rendered[key] = statements
    return statements


_rendered: dict[tuple[str, str | None, str | None], tuple[str, ...]] = {}


class _StatementBuffer(io.StringIO):
    """Alembic's offline output, which writes each statement (or `-- Running ...` comment)
    in one call: the calls are kept apart."""

    def __init__(self) -> None:
        super().__init__()
        self._writes: list[str] = []

    def write(self, s: str, /) -> int:
        self._writes.append(s)
        return super().write(s)

    def statements(self) -> tuple[str, ...]:
        chunks = (chunk.strip().removesuffix(";").strip() for chunk in self._writes)
        return tuple(
            c for c in chunks if c and not all(line.startswith("--") for line in c.splitlines())
        )


async def current_tenant_revision(conn: AsyncConnection) -> str | None:
    """The revision recorded in the pinned schema's own alembic_version, if any."""
    exists = await conn.scalar(text("SELECT to_regclass('alembic_version') IS NOT NULL"))
    if not exists:
        return None
    version = await conn.scalar(text("SELECT version_num FROM alembic_version"))
    return str(version) if version is not None else None


async def upgrade_tenant_schema(
    conn: AsyncConnection, schema: str, script: ScriptDirectory, to_rev: str | None = None
) -> None:
    """Apply pending tenant revisions (up to `to_rev`, head by default) to one schema inside
    `conn`'s transaction."""
    await conn.run_sync(pin_schema_as_owner, schema)
    current = await current_tenant_revision(conn)
    if current == (to_rev or script.get_current_head()):
        return
    # Several statements in one simple-protocol round trip; no parameters are involved.
    await run_script(conn, render_tenant_sql(script, current, to_rev))


@dataclass
class FleetReport:
    head: str | None
    migrated: list[str] = field(default_factory=list)
    current: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    ids: dict[str, uuid.UUID] = field(default_factory=dict)  # slug -> id, of those looked at

    @property
    def ok(self) -> bool:
        return not self.failed


ProgressCallback = Callable[[int, int, str, bool], None]


async def migrate_tenants(
    engine: AsyncEngine,
    *,
    concurrency: int = 4,
    slugs: Iterable[str] | None = None,
    script_dir: Path = TENANT_DIR,
    progress: ProgressCallback | None = None,
) -> FleetReport:
    """Upgrade every tenant that is behind head, `concurrency` at a time.

    Each tenant runs in its own transaction under its own advisory lock and records its
    `schema_version` in that transaction; a failure is reported and does not stop the
    others, and a rerun continues with whoever is still behind.
    """
    script = load_script(script_dir)
    head = script.get_current_head()
    query = select(tenants.c.id, tenants.c.slug, tenants.c.schema, tenants.c.schema_version).where(
        tenants.c.status != "provisioning"
    )
    wanted = list(slugs) if slugs is not None else None
    if wanted is not None:
        query = query.where(tenants.c.slug.in_(wanted))
    async with engine.connect() as conn:
        rows = (await conn.execute(query.order_by(tenants.c.slug))).all()

    report = FleetReport(head=head, ids={row.slug: row.id for row in rows})
    if wanted is not None:
        for missing in sorted(set(wanted) - {row.slug for row in rows}):
            report.failed[missing] = "no such tenant"
    behind = [row for row in rows if row.schema_version != head]
    report.current = [row.slug for row in rows if row.schema_version == head]
    semaphore = asyncio.Semaphore(max(1, concurrency))
    done = 0

    async def one(slug: str, schema: str) -> None:
        nonlocal done
        async with semaphore:
            try:
                async with engine.begin() as conn:
                    await lock(conn, f"tessera.migrate.{schema}")
                    await upgrade_tenant_schema(conn, schema, script)
                    await conn.execute(
                        update(tenants)
                        .where(tenants.c.slug == slug)
                        .values(schema_version=head, updated_at=func.now())
                    )
                report.migrated.append(slug)
                succeeded = True
            except Exception as exc:  # reported per tenant; the fleet goes on
                report.failed[slug] = _one_line(exc)
                logger.warning("tenant migration failed", extra={"tenant": slug})
                succeeded = False
            done += 1
            if progress is not None:
                progress(done, len(behind), slug, succeeded)

    await asyncio.gather(*(one(row.slug, row.schema) for row in behind))
    report.migrated.sort()
    return report


def _one_line(exc: BaseException) -> str:
    message = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0] if message else ''}"[:300]


def run_cli_environment(context: Any, side: str) -> None:
    """Alembic CLI (`alembic -c migrations/<side>/alembic.ini ...`): autogenerate and friends.

    The tenant side works against one template schema, `tenant_template`.
    """
    from app.core.config import get_settings
    from app.db.engine import build_engine

    settings = get_settings().direct()
    metadata = shared_metadata if side == "shared" else tenant_metadata
    schema = PLATFORM_SCHEMA if side == "shared" else TEMPLATE_SCHEMA

    if context.is_offline_mode():
        context.configure(
            url=settings.asyncpg_database_url,
            target_metadata=metadata,
            version_table_schema=schema,
            literal_binds=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        return

    def run(sync_conn: Connection) -> None:
        sync_conn.execute(text(KEEP_SCHEMA_LOCAL_SQL))  # on Citus, the schema stays local
        sync_conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}"))
        if side == "tenant":
            pin_schema_as_owner(sync_conn, schema)
        context.configure(
            connection=sync_conn,
            target_metadata=metadata,
            version_table_schema=schema,
            include_schemas=side == "shared",
        )
        with context.begin_transaction():
            context.run_migrations()

    async def main() -> None:
        engine = build_engine(settings)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(run)
        finally:
            await engine.dispose()

    asyncio.run(main())
