"""Fleet migrations: many tenants at once, failures isolated, reruns continue, no-ops are free."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import redis.asyncio as aioredis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.db.migrate import TENANT_DIR, migrate_tenants
from app.db.repositories.tenants import TenantRecord
from app.services import provisioning
from app.services.tenant_keys import TenantKeys
from tests.factories import post_project
from tests.metrics_support import CacheMeter

ADDITIVE_MIGRATION = '''"""archive projects

Revision ID: t9001
Revises: {down}
"""

import sqlalchemy as sa
from alembic import op

revision = "t9001"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("projects", sa.Column("archived_at", sa.DateTime(timezone=True)))
    op.create_index("ix_projects_archived_at", "projects", ["archived_at"])


def downgrade() -> None:
    op.drop_index("ix_projects_archived_at", table_name="projects")
    op.drop_column("projects", "archived_at")
'''


def tree_with_extra_migration(tmp_path: Path) -> Path:
    from app.db.migrate import load_script

    tree = tmp_path / "tenant"
    shutil.copytree(TENANT_DIR, tree, ignore=shutil.ignore_patterns("__pycache__"))
    down = load_script(TENANT_DIR).get_current_head()
    (tree / "versions" / "2099_01_01_t9001_archive_projects.py").write_text(
        ADDITIVE_MIGRATION.format(down=down)
    )
    return tree


async def has_column(engine: AsyncEngine, schema: str) -> bool:
    async with engine.connect() as conn:
        found = await conn.scalar(
            text(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = :s "
                "AND table_name = 'projects' AND column_name = 'archived_at'"
            ),
            {"s": schema},
        )
    return bool(found)


async def test_fleet_of_200_migrates_with_one_broken_tenant_reported_and_rerun_completing(
    settings: Settings,
    engine: AsyncEngine,
    unique_slug: Callable[[str], str],
    tmp_path: Path,
) -> None:
    fleet = [
        await provisioning.create_tenant(
            engine, settings, slug=unique_slug("fleet"), name="f", plan="free", rate_limit=None
        )
        for _ in range(200)
    ]
    slugs = [record.slug for record in fleet]
    broken = fleet[17]
    async with engine.begin() as conn:  # the broken tenant already has the column
        await conn.execute(
            text(f'ALTER TABLE "{broken.schema}".projects ADD COLUMN archived_at timestamptz')
        )
    tree = tree_with_extra_migration(tmp_path)
    seen: list[tuple[int, int]] = []

    report = await migrate_tenants(
        engine,
        concurrency=4,
        slugs=slugs,
        script_dir=tree,
        progress=lambda done, total, slug, ok: seen.append((done, total)),
    )
    assert report.head == "t9001"
    assert list(report.failed) == [broken.slug], list(report.failed.values())[:3]
    assert "already exists" in report.failed[broken.slug]
    assert len(report.migrated) == 199
    assert seen[-1] == (200, 200)
    for record in fleet[:5] + fleet[-5:]:
        assert await has_column(engine, record.schema)
    async with engine.connect() as conn:
        versions = dict(
            (
                await conn.execute(
                    text("SELECT slug, schema_version FROM platform.tenants WHERE slug = ANY(:s)"),
                    {"s": slugs},
                )
            ).all()
        )
    assert versions[broken.slug] == "t0001"
    assert {v for s, v in versions.items() if s != broken.slug} == {"t9001"}

    async with engine.begin() as conn:  # the fix
        await conn.execute(text(f'ALTER TABLE "{broken.schema}".projects DROP COLUMN archived_at'))
    rerun = await migrate_tenants(engine, slugs=slugs, script_dir=tree)
    assert rerun.migrated == [broken.slug]
    assert rerun.failed == {}
    assert len(rerun.current) == 199

    noop = await migrate_tenants(engine, slugs=slugs, script_dir=tree)
    assert noop.migrated == [] and noop.failed == {}
    assert len(noop.current) == 200


async def test_unknown_tenant_is_reported(engine: AsyncEngine) -> None:
    report = await migrate_tenants(engine, slugs=["no-such-tenant"])
    assert report.failed == {"no-such-tenant": "no such tenant"}


def cli_env(database_url: str, settings: Settings) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": database_url,
        "DB_TENANT_ROLE_PREFIX": settings.db_tenant_role_prefix,
        "REDIS_URL": settings.redis_url,  # the test Redis, never the development one
    }


def test_tessera_migrate_cli_is_idempotent(database_url: str, settings: Settings) -> None:
    env = cli_env(database_url, settings)
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, "-m", "app.cli", "migrate", "--concurrency", "2"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode in (0, 1), result.stderr
        assert "shared schema: at" in result.stdout
        assert "already current" in result.stdout


async def test_tessera_migrate_drops_the_cached_reads_of_the_tenants_it_migrated(
    database_url: str,
    settings: Settings,
    client: httpx.AsyncClient,
    tenant: TenantRecord,
    headers: dict[str, str],
    engine: AsyncEngine,
    redis_client: aioredis.Redis,
) -> None:
    await post_project(client, headers)
    await client.get("/v1/projects", headers=headers)
    # Behind head in the registry only (its schema is current): the run records it as
    # migrated, as after a data migration that may change anything a response shows.
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE platform.tenants SET schema_version = NULL WHERE slug = :slug"),
            {"slug": tenant.slug},
        )
    generation_key = f"{TenantKeys(tenant.slug, tenant.id).prefix}gen"
    before = int(await redis_client.get(generation_key) or 0)
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app.cli", "migrate", "--tenant", tenant.slug],
        env=cli_env(database_url, settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"^  migrated +1$", result.stdout, re.MULTILINE), result.stdout
    assert int(await redis_client.get(generation_key) or 0) == before + 1
    meter = CacheMeter()
    await client.get("/v1/projects", headers=headers)
    assert meter.delta() == {"hit": 0, "miss": 1, "error": 0}
