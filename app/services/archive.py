"""Tenant export and import: one portable archive of a tenant (format: `archive_format.py`).

Export reads every table in one consistent snapshot while the tenant keeps serving. Import
provisions a tenant and loads the archive in the provisioning transaction, its tables built
at the archive's schema version and migrated to head after the rows are in: all or nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.core.config import Settings
from app.db.archive import CopyRejected, TableShape, copy_in, tenant_snapshot, tenant_tables
from app.db.migrate import tenant_script
from app.db.tenancy import TenantSchema, pin_schema_as_owner
from app.schemas.archive import ArchiveManifest, ArchiveTable
from app.services import admin_audit, provisioning, tenants
from app.services.admin_audit import SYSTEM_ACTOR
from app.services.archive_format import (
    ArchiveReader,
    ArchiveSchemaUnsupported,
    CheckedRows,
    InvalidArchive,
    SpooledTable,
    archive_chunks,
)
from app.services.tenants import TenantRecord


@dataclass
class TenantExport:
    """A tenant's snapshot, taken and spooled: stream() sends it, then lets the spools go."""

    manifest: ArchiveManifest
    spools: list[SpooledTable] = field(default_factory=list)

    async def stream(self, *, gzip: bool = False) -> AsyncIterator[bytes]:
        try:
            async for chunk in archive_chunks(self.manifest, self.spools, gzip=gzip):
                yield chunk
        finally:
            self.close()

    def close(self) -> None:
        for spool in self.spools:
            spool.close()


async def export_tenant(
    engine: AsyncEngine, slug: str, *, actor: str = SYSTEM_ACTOR
) -> TenantExport:
    """Read the tenant in one snapshot into spools (TenantNotFound if there is none); the
    snapshot's transaction ends before the archive is sent, however slow the receiver. The
    admin audit log records the export (`tenant.exported`) once the snapshot is read."""
    record = await tenants.get_tenant(engine, slug)
    location = TenantSchema(schema=record.schema, role=record.db_role)
    spools: list[SpooledTable] = []
    tables: list[ArchiveTable] = []
    try:
        async with tenant_snapshot(engine, location) as snapshot:
            revision = await snapshot.revision()
            for shape in await snapshot.tables():
                spool = SpooledTable()
                spools.append(spool)
                rows = await snapshot.copy_out(shape, spool.write)
                tables.append(
                    ArchiveTable(
                        name=shape.name,
                        columns=list(shape.columns),
                        rows=rows,
                        bytes=spool.size,
                        sha256=spool.sha256,
                    )
                )
        if revision is None:
            raise RuntimeError(f"tenant {slug!r} has no recorded schema revision")
        manifest = ArchiveManifest(
            slug=record.slug,
            name=record.name,
            plan=record.plan,
            rate_limit=record.rate_limit,
            schema_version=revision,
            exported_at=datetime.now(UTC),
            tables=tables,
        )
        await admin_audit.record_done(
            engine,
            actor=actor,
            action="tenant.exported",
            tenant=record,
            changes={"archive": _summary(manifest)},
        )
    except BaseException:
        for spool in spools:
            spool.close()
        raise
    return TenantExport(manifest=manifest, spools=spools)


def check_schema_version(manifest: ArchiveManifest) -> None:
    """Refuse an archive whose revision this build's tenant migrations do not know (a newer
    build's, or another application's): its tables could not be built, nor migrated."""
    script = tenant_script()
    known = {revision.revision for revision in script.walk_revisions()}
    if manifest.schema_version not in known:
        raise ArchiveSchemaUnsupported(
            f"The archive's schema version {manifest.schema_version!r} is not one this build "
            f"can migrate (its tenant migrations end at {script.get_current_head()!r}); "
            "import it with a build that has that migration."
        )


async def import_tenant(
    engine: AsyncEngine,
    settings: Settings,
    source: AsyncIterator[bytes],
    *,
    slug: str | None = None,
    actor: str = SYSTEM_ACTOR,
) -> TenantRecord:
    """Provision a tenant from an archive: its manifest, then every table, each checked
    against the manifest's count and checksum before the one transaction commits."""
    reader = ArchiveReader(source)
    manifest = await reader.manifest()
    check_schema_version(manifest)

    async def load(conn: AsyncConnection, location: TenantSchema) -> None:
        await conn.run_sync(pin_schema_as_owner, location.schema)
        shapes = _matching_shapes(manifest, await tenant_tables(conn))
        for table, shape in zip(manifest.tables, shapes, strict=True):
            await _load_table(conn, reader, table, shape)
        if await reader.next_member() is not None:
            raise InvalidArchive("The archive has members its manifest does not list.")

    return await provisioning.create_tenant(
        engine,
        settings,
        slug=slug or manifest.slug,
        name=manifest.name,
        plan=manifest.plan,
        rate_limit=manifest.rate_limit,
        at_revision=manifest.schema_version,
        then=load,
        actor=actor,
        action="tenant.imported",
        details={"archive": _summary(manifest)},
    )


def _summary(manifest: ArchiveManifest) -> dict[str, object]:
    """What the admin audit log keeps of an archive exported or imported."""
    return {
        "slug": manifest.slug,
        "schema_version": manifest.schema_version,
        "rows": sum(table.rows for table in manifest.tables),
    }


def _matching_shapes(manifest: ArchiveManifest, shapes: list[TableShape]) -> list[TableShape]:
    """The manifest's tables, in its order, if they are those its revision builds: the same
    tables with the same columns (in any order: COPY names them, so a schema built from the
    models and one built by the migrations load alike)."""
    built = {shape.name: frozenset(shape.columns) for shape in shapes}
    listed = {table.name: frozenset(table.columns) for table in manifest.tables}
    if listed != built or any(len(t.columns) != len(listed[t.name]) for t in manifest.tables):
        raise InvalidArchive(
            "The archive's tables or columns are not those of its schema version "
            f"{manifest.schema_version!r}."
        )
    return [TableShape(table.name, tuple(table.columns)) for table in manifest.tables]


async def _load_table(
    conn: AsyncConnection, reader: ArchiveReader, table: ArchiveTable, shape: TableShape
) -> None:
    member = await reader.next_member()
    if member is None or member[0] != table.member:
        found = "the end" if member is None else repr(member[0])
        raise InvalidArchive(f"The archive has {found} where {table.member!r} belongs.")
    if member[1] != table.bytes:
        raise InvalidArchive(f"The archive's {table.member} is not the size its manifest says.")
    checked = CheckedRows()
    try:
        rows = await copy_in(conn, shape, checked.through(reader.member_chunks(member[1])))
    except CopyRejected as exc:
        raise InvalidArchive(f"The archive's rows were refused: {exc}") from exc
    if checked.sha256 != table.sha256:
        raise InvalidArchive(f"The archive's {table.member} does not match its checksum.")
    if rows != table.rows:
        raise InvalidArchive(
            f"The archive's {table.member} holds {rows} rows, its manifest says {table.rows}."
        )
