"""Tenant export and import (issue 18 part C): the archive round trip, its snapshot, and every
way an archive can be refused with nothing left behind; admin API and CLI."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.db import migrate
from app.db.archive import TableShape, tenant_snapshot
from app.db.repositories.tenants import TenantRecord
from app.db.tenancy import TenantSchema
from app.schemas.archive import ARCHIVE_MEDIA_TYPE
from app.services import tenant_lifecycle
from app.services import tenants as tenant_service
from tests.factories import post_project, post_task
from tests.integration.test_fleet_migration import (
    cli_env,
    has_column,
    tree_with_extra_migration,
)
from tests.support import assert_problem

Headers = dict[str, str]
TABLES = ("projects", "tasks", "audit_events", "idempotency_keys")


async def fill(client: httpx.AsyncClient, headers: Headers) -> None:
    """Projects, tasks with labels, an update (version 2), a delete, an idempotent create:
    every table holds rows, audit events included."""
    projects = [await post_project(client, headers) for _ in range(3)]
    for project in projects:
        for labels in (["backend"], ["frontend", "urgent"], []):
            await post_task(client, headers, project["id"], labels=labels)
    task = await post_task(client, headers, projects[0]["id"], title="edited later")
    response = await client.patch(
        f"/v1/tasks/{task['id']}",
        json={"status": "done"},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    response = await client.delete(f"/v1/projects/{projects[2]['id']}", headers=headers)
    assert response.status_code == 204, response.text
    response = await client.post(
        "/v1/projects", json={"name": "keyed"}, headers={**headers, "Idempotency-Key": "k-1"}
    )
    assert response.status_code == 201, response.text


async def dump(engine: AsyncEngine, schema: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every tenant table, ordered, and the schema's migration revision."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    async with engine.connect() as conn:
        for table in (*TABLES, "alembic_version"):
            rows = await conn.execute(text(f'SELECT * FROM "{schema}".{table} ORDER BY 1'))
            out[table] = [tuple(row) for row in rows]
    return out


async def nothing_left(engine: AsyncEngine, settings: Settings, slug: str) -> None:
    schema = "tenant_" + slug.replace("-", "_")
    async with engine.connect() as conn:
        row = await conn.scalar(
            text("SELECT count(*) FROM platform.tenants WHERE slug = :s"), {"s": slug}
        )
        found_schema = await conn.scalar(
            text("SELECT count(*) FROM pg_namespace WHERE nspname = :s"), {"s": schema}
        )
        role = await conn.scalar(
            text("SELECT count(*) FROM pg_roles WHERE rolname = :r"),
            {"r": settings.db_tenant_role_prefix + schema},
        )
    assert (row, found_schema, role) == (0, 0, 0)


async def export(client: httpx.AsyncClient, admin: Headers, slug: str, **params: Any) -> bytes:
    response = await client.post(f"/admin/v1/tenants/{slug}/export", headers=admin, params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == ARCHIVE_MEDIA_TYPE
    return response.content


async def import_(
    client: httpx.AsyncClient, admin: Headers, archive: bytes, slug: str | None = None
) -> httpx.Response:
    return await client.post(
        "/admin/v1/tenants/import",
        content=archive,
        headers={**admin, "Content-Type": ARCHIVE_MEDIA_TYPE},
        params={} if slug is None else {"slug": slug},
    )


def members(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r|*") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]


def rebuilt(archive: bytes, edit: Callable[[dict[str, bytes]], None]) -> bytes:
    """The archive with its members changed by `edit` (member order kept)."""
    files = members(archive)
    edit(files)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def edit_manifest(**changes: Any) -> Callable[[dict[str, bytes]], None]:
    def edit(files: dict[str, bytes]) -> None:
        manifest = json.loads(files["manifest.json"])
        manifest.update(changes)
        files["manifest.json"] = json.dumps(manifest).encode()

    return edit


@pytest.fixture
async def filled(client: httpx.AsyncClient, tenant: TenantRecord, headers: Headers) -> TenantRecord:
    await fill(client, headers)
    return tenant


async def test_round_trip_under_a_new_slug_keeps_every_row_version_and_audit_event(
    client: httpx.AsyncClient,
    admin: Headers,
    auth: Callable[..., Headers],
    filled: TenantRecord,
    engine: AsyncEngine,
    unique_slug: Callable[[str], str],
) -> None:
    archive = await export(client, admin, filled.slug)
    names = list(members(archive))
    assert names[0] == "manifest.json"
    assert sorted(names[1:]) == sorted(f"{t}.copy" for t in TABLES)
    assert names.index("projects.copy") < names.index("tasks.copy")  # parents first
    new = unique_slug("copy")
    response = await import_(client, admin, archive, new)
    assert response.status_code == 201, response.text
    assert response.headers["Location"] == f"/admin/v1/tenants/{new}"
    body = response.json()
    assert (body["slug"], body["name"], body["plan"], body["status"]) == (
        new,
        filled.name,
        filled.plan,
        "active",
    )
    assert body["schema_version"] == filled.schema_version
    original, copy = await dump(engine, filled.schema), await dump(engine, body["schema"])
    assert all(original[table] for table in TABLES)
    assert copy == original
    # The copy serves: its own tenant's tokens read the same audit trail.
    new_record = await tenant_service.get_tenant(engine, new)
    events = await client.get("/v1/audit-events?limit=100", headers=auth(new_record))
    assert events.status_code == 200
    assert len(events.json()["items"]) == len(original["audit_events"])


async def test_gzipped_archive_imports_under_the_slug_it_was_exported_with(
    client: httpx.AsyncClient,
    admin: Headers,
    filled: TenantRecord,
    engine: AsyncEngine,
) -> None:
    archive = await export(client, admin, filled.slug, gzip="true")
    assert archive[:2] == b"\x1f\x8b"
    original = await dump(engine, filled.schema)
    await client.post(f"/admin/v1/tenants/{filled.slug}/suspend", headers=admin)
    await tenant_lifecycle.delete_tenant(engine, filled.slug, grace_seconds=0)
    response = await import_(client, admin, archive)  # the slug is free again: a restore
    assert response.status_code == 201, response.text
    assert await dump(engine, filled.schema) == original


async def test_export_while_writes_run_reads_one_consistent_snapshot(
    client: httpx.AsyncClient,
    admin: Headers,
    filled: TenantRecord,
    headers: Headers,
    engine: AsyncEngine,
    unique_slug: Callable[[str], str],
) -> None:
    project = await post_project(client, headers)
    # Enough audit history that copying it takes a while (its table is copied before tasks'):
    # tasks created meanwhile must show in neither table.
    async with engine.begin() as conn:
        await conn.execute(
            text(
                f'INSERT INTO "{filled.schema}".audit_events '
                "(id, actor, action, resource_type, resource_id) "
                "SELECT gen_random_uuid(), 'seed', 'project.updated', 'project', "
                "gen_random_uuid() FROM generate_series(1, 100000)"
            )
        )
    stop = asyncio.Event()
    written = 0

    async def writer() -> None:
        nonlocal written
        while not stop.is_set():
            await post_task(client, headers, project["id"])
            written += 1

    running = asyncio.create_task(writer())
    try:
        archives = []
        for _ in range(3):
            archives.append(await export(client, admin, filled.slug))
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await running
    assert written > 0
    for archive in archives:
        manifest = json.loads(members(archive)["manifest.json"])
        copy = unique_slug("snap")
        assert (await import_(client, admin, archive, copy)).status_code == 201
        schema = "tenant_" + copy.replace("-", "_")
        async with engine.connect() as conn:
            tasks = await conn.scalar(text(f'SELECT count(*) FROM "{schema}".tasks'))
            created = await conn.scalar(
                text(
                    f"SELECT count(*) FROM \"{schema}\".audit_events WHERE action = 'task.created'"
                )
            )
        # Each task and its audit event commit together: one snapshot holds both or neither
        # (one task of `fill` went with its deleted project, its event stays).
        rows = {t["name"]: t["rows"] for t in manifest["tables"]}
        assert tasks == rows["tasks"]
        assert created == tasks + 3


async def test_snapshot_lists_the_pinned_schemas_tables_and_nothing_else(
    engine: AsyncEngine, tenant: TenantRecord, other_tenant: TenantRecord
) -> None:
    """The tables come from the pinned schema alone (not another tenant's, not its views,
    sequences or indexes, not alembic_version), parents first, with the columns COPY takes
    (no dropped or generated column)."""
    own, other = f'"{tenant.schema}"', f'"{other_tenant.schema}"'
    async with engine.begin() as conn:
        for statement in (
            f"CREATE TABLE {own}.notes (id int PRIMARY KEY, gone int, body text, "
            f"size int GENERATED ALWAYS AS (length(body)) STORED, "
            f"task_id uuid REFERENCES {own}.tasks (id))",
            f"ALTER TABLE {own}.notes DROP COLUMN gone",
            f"CREATE VIEW {own}.open_tasks AS SELECT id FROM {own}.tasks",
            f"CREATE SEQUENCE {own}.counter",
            f"CREATE TABLE {other}.elsewhere (id int)",
        ):
            await conn.execute(text(statement))
    location = TenantSchema(schema=tenant.schema, role=tenant.db_role)
    async with tenant_snapshot(engine, location) as snapshot:
        shapes = await snapshot.tables()
    names = [shape.name for shape in shapes]
    assert sorted(names) == sorted([*TABLES, "notes"])
    assert names.index("projects") < names.index("tasks") < names.index("notes")
    assert TableShape("notes", ("id", "body", "task_id")) in shapes


@pytest.mark.parametrize(
    "cut",
    [10, 600, -1100, -600, -1],
    ids=["in-header", "in-manifest", "in-rows", "before-end", "in-end-marker"],
)
async def test_truncated_archive_is_refused_and_leaves_nothing(
    client: httpx.AsyncClient,
    admin: Headers,
    filled: TenantRecord,
    engine: AsyncEngine,
    settings: Settings,
    unique_slug: Callable[[str], str],
    cut: int,
) -> None:
    archive = await export(client, admin, filled.slug)
    slug = unique_slug("cut")
    response = await import_(client, admin, archive[:cut], slug)
    body = assert_problem(response, 422, "invalid_archive")
    assert "truncated" in str(body["detail"])
    await nothing_left(engine, settings, slug)


async def test_rows_that_do_not_match_their_checksum_are_refused(
    client: httpx.AsyncClient,
    admin: Headers,
    filled: TenantRecord,
    engine: AsyncEngine,
    settings: Settings,
    unique_slug: Callable[[str], str],
) -> None:
    archive = await export(client, admin, filled.slug)

    def tamper(files: dict[str, bytes]) -> None:  # still valid COPY data, same size
        files["tasks.copy"] = files["tasks.copy"].replace(b"Task", b"Tusk", 1)

    slug = unique_slug("tamper")
    response = await import_(client, admin, rebuilt(archive, tamper), slug)
    body = assert_problem(response, 422, "invalid_archive")
    assert "checksum" in str(body["detail"])
    await nothing_left(engine, settings, slug)

    def corrupt(files: dict[str, bytes]) -> None:  # not COPY data at all
        files["tasks.copy"] = b"not\ta\trow\n" + files["tasks.copy"][11:]

    response = await import_(client, admin, rebuilt(archive, corrupt), slug)
    assert_problem(response, 422, "invalid_archive")
    await nothing_left(engine, settings, slug)


async def test_truncated_or_corrupt_gzip_is_refused(
    client: httpx.AsyncClient,
    admin: Headers,
    filled: TenantRecord,
    engine: AsyncEngine,
    settings: Settings,
    unique_slug: Callable[[str], str],
) -> None:
    archive = await export(client, admin, filled.slug, gzip="true")
    slug = unique_slug("gz")
    body = assert_problem(
        await import_(client, admin, archive[: len(archive) // 2], slug), 422, "invalid_archive"
    )
    assert "truncated" in str(body["detail"])
    middle = len(archive) // 2
    flipped = archive[:middle] + bytes([archive[middle] ^ 0xFF]) + archive[middle + 1 :]
    assert_problem(await import_(client, admin, flipped, slug), 422, "invalid_archive")
    await nothing_left(engine, settings, slug)


@pytest.mark.parametrize(
    "foreign",
    [
        os.urandom(4096),
        gzip.compress(os.urandom(4096)),
        b"",
        b"\0" * 1024,
    ],
    ids=["random-bytes", "gzipped-random", "empty", "empty-tar"],
)
async def test_foreign_file_is_refused(
    client: httpx.AsyncClient,
    admin: Headers,
    engine: AsyncEngine,
    settings: Settings,
    unique_slug: Callable[[str], str],
    foreign: bytes,
) -> None:
    slug = unique_slug("foreign")
    assert_problem(await import_(client, admin, foreign, slug), 422, "invalid_archive")
    await nothing_left(engine, settings, slug)


async def test_tar_without_a_manifest_or_with_a_bad_one_is_refused(
    client: httpx.AsyncClient,
    admin: Headers,
    filled: TenantRecord,
    engine: AsyncEngine,
    settings: Settings,
    unique_slug: Callable[[str], str],
) -> None:
    archive = await export(client, admin, filled.slug)
    slug = unique_slug("bad")
    no_manifest = rebuilt(archive, lambda files: files.pop("manifest.json"))
    body = assert_problem(await import_(client, admin, no_manifest, slug), 422, "invalid_archive")
    assert "manifest.json" in str(body["detail"])

    def rename_a_column(files: dict[str, bytes]) -> None:
        manifest = json.loads(files["manifest.json"])
        manifest["tables"][0]["columns"][0] = "not_a_column"
        files["manifest.json"] = json.dumps(manifest).encode()

    for edit in (
        rename_a_column,
        edit_manifest(format_version=2),
        edit_manifest(format="something-else"),
        edit_manifest(rate_limit="lots"),
        edit_manifest(tables=[]),
        lambda files: files.update({"extra.copy": b""}),
    ):
        response = await import_(client, admin, rebuilt(archive, edit), slug)
        assert_problem(response, 422, "invalid_archive")
    await nothing_left(engine, settings, slug)


async def test_unknown_schema_version_is_refused(
    client: httpx.AsyncClient,
    admin: Headers,
    filled: TenantRecord,
    engine: AsyncEngine,
    settings: Settings,
    unique_slug: Callable[[str], str],
) -> None:
    archive = rebuilt(
        await export(client, admin, filled.slug), edit_manifest(schema_version="t9999")
    )
    slug = unique_slug("future")
    body = assert_problem(
        await import_(client, admin, archive, slug), 422, "archive_schema_unsupported"
    )
    assert "t9999" in str(body["detail"])
    await nothing_left(engine, settings, slug)


async def test_archive_of_an_older_schema_version_is_migrated_to_head(
    client: httpx.AsyncClient,
    admin: Headers,
    filled: TenantRecord,
    engine: AsyncEngine,
    settings: Settings,
    unique_slug: Callable[[str], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    archive = await export(client, admin, filled.slug)
    original = await dump(engine, filled.schema)
    # A later build: its tenant migrations have one more revision (projects.archived_at).
    monkeypatch.setattr(migrate, "TENANT_DIR", tree_with_extra_migration(tmp_path))
    migrate.tenant_script.cache_clear()
    slug = unique_slug("newer")
    try:
        response = await import_(client, admin, archive, slug)
        assert response.status_code == 201, response.text
        assert response.json()["schema_version"] == "t9001"
        schema = response.json()["schema"]
        assert await has_column(engine, schema)
        copy = await dump(engine, schema)
        assert copy["tasks"] == original["tasks"]
        assert copy["audit_events"] == original["audit_events"]
        assert [row[:-1] for row in copy["projects"]] == original["projects"]  # + archived_at
    finally:
        monkeypatch.undo()
        migrate.tenant_script.cache_clear()
        await client.post(f"/admin/v1/tenants/{slug}/suspend", headers=admin)
        await tenant_lifecycle.delete_tenant(engine, slug, grace_seconds=0)


async def test_import_over_an_existing_slug_is_409_and_changes_nothing(
    client: httpx.AsyncClient,
    admin: Headers,
    filled: TenantRecord,
    other_tenant: TenantRecord,
    engine: AsyncEngine,
) -> None:
    archive = await export(client, admin, filled.slug)
    before = await dump(engine, other_tenant.schema)
    response = await import_(client, admin, archive, other_tenant.slug)
    assert_problem(response, 409, "tenant_exists")
    response = await import_(client, admin, archive)  # the archive's own slug: still there
    assert_problem(response, 409, "tenant_exists")
    assert await dump(engine, other_tenant.schema) == before


async def test_archive_endpoints_need_the_admin_scope_and_a_known_tenant(
    client: httpx.AsyncClient,
    admin: Headers,
    headers: Headers,
    tenant: TenantRecord,
) -> None:
    response = await client.post(f"/admin/v1/tenants/{tenant.slug}/export", headers=headers)
    assert_problem(response, 403, "insufficient_scope")
    response = await client.post("/admin/v1/tenants/import", content=b"x", headers=headers)
    assert_problem(response, 403, "insufficient_scope")
    response = await client.post("/admin/v1/tenants/no-such-one/export", headers=admin)
    assert_problem(response, 404, "tenant_not_found")
    response = await import_(client, admin, b"", "admin")
    assert_problem(response, 422, "validation_error")


async def test_import_body_may_pass_max_body_bytes_up_to_archive_max_bytes(
    settings: Settings,
    admin: Headers,
    filled: TenantRecord,
    client: httpx.AsyncClient,
    unique_slug: Callable[[str], str],
) -> None:
    from tests.support import running_app

    archive = await export(client, admin, filled.slug)
    small = settings.model_copy(update={"max_body_bytes": 1000, "archive_max_bytes": 10**7})
    async with running_app(small) as (_, replica):
        response = await import_(replica, admin, archive, unique_slug("big"))
        assert response.status_code == 201, response.text
    tiny = settings.model_copy(update={"archive_max_bytes": 1000})
    async with running_app(tiny) as (_, replica):
        response = await import_(replica, admin, archive, unique_slug("big"))
        assert_problem(response, 413, "payload_too_large")


async def test_cli_exports_to_a_file_and_imports_it_under_a_new_slug(
    database_url: str,
    settings: Settings,
    filled: TenantRecord,
    engine: AsyncEngine,
    unique_slug: Callable[[str], str],
    tmp_path: Path,
) -> None:
    env = cli_env(database_url, settings)

    def tessera(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 - our own CLI
            [sys.executable, "-m", "app.cli", "tenants", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    file = tmp_path / "acme.tar.gz"
    done = await asyncio.to_thread(tessera, "export", filled.slug, "--output", str(file), "--gzip")
    assert done.returncode == 0, done.stderr
    new = unique_slug("cli")
    done = await asyncio.to_thread(tessera, "import", str(file), "--slug", new)
    assert done.returncode == 0, done.stderr
    assert f"tenant {new} imported" in done.stdout
    record = await tenant_service.get_tenant(engine, new)
    assert await dump(engine, record.schema) == await dump(engine, filled.schema)

    again = await asyncio.to_thread(tessera, "import", str(file), "--slug", new)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [
        f"error: A tenant with slug {new!r} already exists."
    ]
    (tmp_path / "junk").write_bytes(os.urandom(2000))
    junk = await asyncio.to_thread(tessera, "import", str(tmp_path / "junk"), "--slug", new + "x")
    assert junk.returncode == 2
    assert len(junk.stderr.strip().splitlines()) == 1
    assert junk.stderr.startswith("error: Not a Tessera tenant archive")
    await nothing_left(engine, settings, new + "x")
