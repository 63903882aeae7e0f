"""Admin API: tenant lifecycle (scope AUTH_ADMIN_SCOPE)."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status

from app import metrics
from app.api.dependencies.auth import AdminDep, require_admin
from app.api.dependencies.db import EngineDep
from app.api.dependencies.pagination import PageCursor, PageLimit
from app.api.errors import ADMIN_ERRORS, responses
from app.core.slugs import SLUG_MAX, SLUG_MIN, SLUG_PATTERN
from app.schemas.common import Page, without_null
from app.schemas.tenants import (
    TenantCreate,
    TenantMove,
    TenantOut,
    TenantPlacementOut,
    TenantUpdate,
)
from app.services import placement, provisioning, tenant_lifecycle
from app.services import plans as plans_service
from app.services import tenants as service
from app.services.pagination import DEFAULT_LIMIT
from app.services.tenant_keys import TenantKeys
from app.services.tenants import TenantRegistry

router = APIRouter(
    prefix="/admin/v1/tenants",
    tags=["admin: tenants"],
    dependencies=[Depends(require_admin)],
    responses=responses(*ADMIN_ERRORS),
)

# A slug in a path: one of the form a tenant can have (else 422); one of that form that names
# no tenant answers 404.
TenantSlug = Annotated[str, Path(min_length=SLUG_MIN, max_length=SLUG_MAX, pattern=SLUG_PATTERN)]


async def _shown(
    request: Request, engine: EngineDep, *records: service.TenantRecord
) -> list[TenantOut]:
    """Tenants as the admin API shows them: with the limit in force, their own, else their
    plan's, else the default."""
    default = request.app.state.settings.rate_limit_default
    by_plan = await plans_service.rate_limits(engine)
    return [
        TenantOut.model_validate(
            replace(r, rate_limit=r.rate_limit or by_plan.get(r.plan) or default),
            from_attributes=True,
        )
        for r in records
    ]


async def tenant_out(
    request: Request, engine: EngineDep, record: service.TenantRecord
) -> TenantOut:
    return (await _shown(request, engine, record))[0]


# 422 on a create or an update: the body's form, or a plan that does not exist.
UNKNOWN_PLAN: dict[int | str, dict[str, Any]] = {
    422: {
        **responses(422)[422],
        "description": "Validation error (`validation_error`, with `errors`), or no plan of "
        "that name (`unknown_plan`)",
    }
}


def forget_tenant(request: Request, slug: str) -> None:
    registry: TenantRegistry = request.app.state.tenant_registry
    registry.forget(slug)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TenantOut,
    summary="Provision a tenant: role, schema and tables at the latest migration",
    responses={**responses(409), **UNKNOWN_PLAN},
)
async def create_tenant(
    request: Request, response: Response, body: TenantCreate, engine: EngineDep, admin: AdminDep
) -> TenantOut:
    started = time.perf_counter()
    record = await provisioning.create_tenant(
        engine,
        request.app.state.settings,
        slug=body.slug,
        name=body.name,
        plan=body.plan,
        rate_limit=body.rate_limit,
        actor=admin.subject,
    )
    metrics.observe_provisioning(time.perf_counter() - started)
    forget_tenant(request, record.slug)
    # No cache work: a slug may have named a deleted tenant, but its Redis keys carry its
    # id, which the new tenant does not share (docs/decisions/0022-tenant-identity-in-keys.md).
    response.headers["Location"] = f"/admin/v1/tenants/{record.slug}"
    return await tenant_out(request, engine, record)


@router.get("", response_model=Page[TenantOut], summary="List tenants, newest first")
async def list_tenants(
    request: Request,
    engine: EngineDep,
    status_: Annotated[
        Literal["active", "suspended", "deleted"] | None,
        Query(alias="status", json_schema_extra=without_null()),
    ] = None,
    limit: PageLimit = DEFAULT_LIMIT,
    cursor: PageCursor = None,
) -> Page[TenantOut]:
    records, next_cursor = await service.list_tenants(
        engine, limit=limit, status=status_, cursor=cursor
    )
    items = await _shown(request, engine, *records)
    return Page[TenantOut](items=items, next_cursor=next_cursor)


@router.get("/{slug}", response_model=TenantOut, summary="One tenant", responses=responses(404))
async def get_tenant(request: Request, slug: TenantSlug, engine: EngineDep) -> TenantOut:
    return await tenant_out(request, engine, await service.get_tenant(engine, slug))


@router.patch(
    "/{slug}",
    response_model=TenantOut,
    summary="Change name, plan or rate limit (in force everywhere within 1 s)",
    responses={
        **responses(404, 409),
        409: {**responses(409)[409], "description": "`tenant_deleted`: restore it first"},
        **UNKNOWN_PLAN,
    },
)
async def update_tenant(
    request: Request, slug: TenantSlug, body: TenantUpdate, engine: EngineDep, admin: AdminDep
) -> TenantOut:
    changes = body.model_dump(exclude_unset=True)
    record = await service.update_tenant(engine, slug, actor=admin.subject, **changes)
    forget_tenant(request, slug)
    return await tenant_out(request, engine, record)


async def _set_status(
    request: Request, slug: str, engine: EngineDep, new: str, actor: str
) -> TenantOut:
    record = await service.update_tenant(engine, slug, status=new, actor=actor)
    forget_tenant(request, slug)
    return await tenant_out(request, engine, record)


SUSPEND_SUMMARY = "Suspend: the tenant's tokens get 403 within 1 s; data is kept"
# The status changes: each answers the tenant, 404, or 409 `tenant_deleted` (restore first).
STATUS_CHANGE: dict[str, Any] = {
    "response_model": TenantOut,
    "responses": {
        **responses(404, 409),
        409: {**responses(409)[409], "description": "`tenant_deleted`: restore it first"},
    },
}


@router.post("/{slug}/suspend", summary=SUSPEND_SUMMARY, **STATUS_CHANGE)
async def suspend_tenant(
    request: Request, slug: TenantSlug, engine: EngineDep, admin: AdminDep
) -> TenantOut:
    return await _set_status(request, slug, engine, "suspended", admin.subject)


@router.post("/{slug}/resume", summary="Resume a suspended tenant", **STATUS_CHANGE)
async def resume_tenant(
    request: Request, slug: TenantSlug, engine: EngineDep, admin: AdminDep
) -> TenantOut:
    return await _set_status(request, slug, engine, "active", admin.subject)


@router.post(
    "/{slug}/restore",
    response_model=TenantOut,
    summary="Restore a deleted tenant, as suspended, before it is purged",
    description=(
        "Brings a `deleted` tenant back as `suspended`, data untouched (resume it to open "
        "its API again). A tenant that is not deleted answers 409 `tenant_not_deleted`; one "
        "already purged no longer exists: 404 `tenant_not_found`."
    ),
    responses={
        **responses(404, 409),
        409: {**responses(409)[409], "description": "`tenant_not_deleted`"},
    },
)
async def restore_tenant(
    request: Request, slug: TenantSlug, engine: EngineDep, admin: AdminDep
) -> TenantOut:
    record = await tenant_lifecycle.restore_tenant(engine, slug, actor=admin.subject)
    forget_tenant(request, slug)
    return await tenant_out(request, engine, record)


@router.post(
    "/{slug}/move",
    response_model=TenantPlacementOut,
    summary="Move the tenant's schema to another Citus worker (citus_schema_move)",
    description=(
        "Where Tessera runs on a Citus cluster with schema-based sharding, relocates the "
        "tenant's schema, data included, to the worker `node` (`host:port` as in "
        "`pg_dist_node`). The tenant keeps serving during the move: reads go on throughout; "
        "its writes wait while Citus copies the schema (`block_writes`: about a second for a "
        "small tenant, longer with more data), then land on the new worker; none fails. "
        "Answers when the move is complete. On plain PostgreSQL there is nowhere to move to: "
        "409 `not_distributed`."
    ),
    responses={
        **responses(404, 409, 422),
        409: {
            **responses(409)[409],
            "description": "`not_distributed` (plain PostgreSQL, or a schema Citus does not "
            "distribute), or `move_failed` (Citus refused or aborted the move; the tenant "
            "stays where it was)",
        },
        422: {
            **responses(422)[422],
            "description": "`validation_error` (not `host:port`), or `unknown_node` (not an "
            "active worker of this cluster)",
        },
    },
)
async def move_tenant(
    request: Request, slug: TenantSlug, body: TenantMove, engine: EngineDep, admin: AdminDep
) -> TenantPlacementOut:
    host, port = body.node.rsplit(":", 1)
    moved = await placement.move_tenant(
        engine, request.app.state.settings, slug, host, int(port), actor=admin.subject
    )
    return TenantPlacementOut(
        slug=moved.slug, schema_=moved.schema, node=moved.node, previous_node=moved.previous_node
    )


@router.delete(
    "/{slug}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a suspended tenant: restorable for TENANT_PURGE_GRACE_SECONDS, then purged",
    description=(
        "Only a suspended tenant. It becomes `deleted` with `purge_after` = now + "
        "TENANT_PURGE_GRACE_SECONDS (default 7 days): its data untouched, its tokens refused "
        "(403 `tenant_deleted`), its slug still taken, restorable with `POST .../restore`. "
        "`tessera tenants purge` (the CronJob) then drops its schema, data, role, cache "
        "entries and registry row. With a grace of 0 it is purged within this request. "
        "204 either way."
    ),
    responses={
        **responses(404, 409),
        409: {
            **responses(409)[409],
            "description": "`tenant_active` (suspend it first), or `tenant_deleted` (already)",
        },
    },
)
async def delete_tenant(
    request: Request, slug: TenantSlug, engine: EngineDep, admin: AdminDep
) -> Response:
    grace = request.app.state.settings.tenant_purge_grace_seconds
    deletion = await tenant_lifecycle.delete_tenant(
        engine, slug, grace_seconds=grace, actor=admin.subject
    )
    forget_tenant(request, slug)
    if deletion.purged:
        # Cleanup: everything the tenant had cached becomes unreachable at once (a
        # generation bump). Keeping a later tenant of this slug apart does not depend on
        # it (its keys carry another id); Redis being down only leaves entries that expire
        # with their TTL.
        keys = TenantKeys(deletion.tenant.slug, deletion.tenant.id)
        await request.app.state.cache.bump_generation(keys)
        await request.app.state.request_tally.forget(keys)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
