"""Admin API: a tenant exported as one archive, and a tenant imported from one."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from app.api.dependencies.auth import AdminDep, require_admin
from app.api.dependencies.db import EngineDep
from app.api.endpoints.tenants import TenantSlug, forget_tenant, tenant_out
from app.api.errors import ADMIN_ERRORS, responses
from app.schemas.archive import ARCHIVE_MEDIA_TYPE
from app.schemas.tenants import Slug, TenantOut
from app.services import archive

IMPORT_PATH = "/admin/v1/tenants/import"

router = APIRouter(
    prefix="/admin/v1/tenants",
    tags=["admin: tenants"],
    dependencies=[Depends(require_admin)],
    responses=responses(*ADMIN_ERRORS),
)

_BINARY = {"schema": {"type": "string", "format": "binary"}}
_ARCHIVE_FORMAT = (
    "A tar stream (gzipped when asked): `manifest.json` first (slug, name, plan, rate limit, "
    "schema version, and per table its columns, row count, byte size and SHA-256), then one "
    "`<table>.copy` member per table, parents first, in PostgreSQL's COPY text format. "
    "README.md, 'Tenant export and import', describes it."
)


class ArchiveResponse(StreamingResponse):
    media_type = ARCHIVE_MEDIA_TYPE


@router.post(
    "/{slug}/export",
    response_class=ArchiveResponse,
    summary="Export the tenant as one archive, read in one consistent snapshot",
    description=(
        "Reads every table of the tenant in one REPEATABLE READ snapshot while it keeps "
        "serving, then streams the archive. " + _ARCHIVE_FORMAT + " Suspend the tenant "
        "first when no write may be missed (moving it to another database)."
    ),
    responses={
        200: {"description": "The archive", "content": {ARCHIVE_MEDIA_TYPE: _BINARY}},
        **responses(404),
    },
)
async def export_tenant(
    slug: TenantSlug,
    engine: EngineDep,
    admin: AdminDep,
    gzip: Annotated[bool, Query(description="gzip the archive")] = False,
) -> ArchiveResponse:
    export = await archive.export_tenant(engine, slug, actor=admin.subject)
    name = f"{slug}.tar" + (".gz" if gzip else "")
    return ArchiveResponse(
        export.stream(gzip=gzip),
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


_IMPORT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The archive, as export wrote it (gzipped or not). "
        "At most ARCHIVE_MAX_BYTES.",
        "content": {ARCHIVE_MEDIA_TYPE: _BINARY, "application/octet-stream": _BINARY},
    }
}

_IMPORT_ERRORS: dict[int | str, dict[str, Any]] = {
    **responses(409, 422),
    409: {**responses(409)[409], "description": "`tenant_exists`: the slug is taken"},
    413: {
        **responses(413)[413],
        "description": "The archive is over ARCHIVE_MAX_BYTES (`payload_too_large`)",
    },
    422: {
        **responses(422)[422],
        "description": "`invalid_archive` (truncated, corrupt, not a Tessera archive, or rows "
        "its checksums or counts refuse), `archive_schema_unsupported` (a schema version this "
        "build cannot migrate), or `validation_error` (the `slug` parameter)",
    },
}


@router.post(
    "/import",
    status_code=status.HTTP_201_CREATED,
    response_model=TenantOut,
    summary="Provision a tenant from an archive, all or nothing",
    description=(
        "Provisions the tenant (under the archive's slug, or `slug`) and loads every table "
        "in the one provisioning transaction; an archive of an older schema version is "
        "migrated to the latest. Any problem leaves nothing behind. " + _ARCHIVE_FORMAT
    ),
    responses=_IMPORT_ERRORS,
    openapi_extra=_IMPORT_BODY,
)
async def import_tenant(
    request: Request,
    response: Response,
    engine: EngineDep,
    admin: AdminDep,
    slug: Annotated[
        Slug | None,
        Query(description="the new tenant's slug (default: the archive's)"),
    ] = None,
) -> TenantOut:
    record = await archive.import_tenant(
        engine,
        request.app.state.settings,
        request.stream(),
        slug=slug,
        actor=admin.subject,
    )
    # No cache work: the new tenant's Redis keys carry its own id (decision 0022).
    forget_tenant(request, record.slug)
    response.headers["Location"] = f"/admin/v1/tenants/{record.slug}"
    return await tenant_out(request, engine, record)
