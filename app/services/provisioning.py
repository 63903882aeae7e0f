"""Provisioning a tenant: registry row, role, schema, tables and grants in one transaction,
with its admin audit event; an import (app/services/archive.py) loads its tables inside it."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Awaitable, Callable

from sqlalchemy.exc import IntegrityError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.core.config import Settings
from app.db import tenancy
from app.db.migrate import tenant_script, tenant_stamp_sql, upgrade_tenant_schema
from app.db.repositories import tenants as repo
from app.db.tenancy import TenantSchema
from app.services import admin_audit
from app.services.admin_audit import SYSTEM_ACTOR
from app.services.quotas import UnknownPlan
from app.services.tenants import TenantExists, TenantRecord

DUPLICATE_OBJECT = "42710"  # SQLSTATE of CREATE ROLE on a name already taken

ProvisioningStep = Callable[[AsyncConnection, TenantSchema], Awaitable[None]]


async def _tables_from_models(conn: AsyncConnection, location: TenantSchema) -> None:
    await tenancy.create_tables(conn, location, then=tenant_stamp_sql())


async def _tables_from_migrations(
    conn: AsyncConnection, location: TenantSchema, to_rev: str | None = None
) -> None:
    await upgrade_tenant_schema(conn, location.schema, tenant_script(), to_rev)


# The steps, in order, all inside one transaction: any failure rolls every one back.
PROVISIONING_STEPS: list[tuple[str, ProvisioningStep]] = [
    ("create_role", tenancy.create_role),
    ("create_schema", tenancy.create_schema),
    ("create_tables", _tables_from_models),
    ("grant_privileges", tenancy.grant_privileges),
]


async def create_tenant(
    engine: AsyncEngine,
    settings: Settings,
    *,
    slug: str,
    name: str,
    plan: str,
    rate_limit: str | None,
    from_migrations: bool = False,
    actor: str = SYSTEM_ACTOR,
    at_revision: str | None = None,
    then: ProvisioningStep | None = None,
    action: str = "tenant.created",
    details: dict[str, object] | None = None,
) -> TenantRecord:
    """Provision a tenant completely, or leave nothing behind (role, schema, registry row).
    An import builds the tables `at_revision`, loads them in `then`, then they go to head;
    it records its admin event as `action` (`tenant.imported`) with `details`."""
    location = tenancy.schema_for(slug, settings.db_tenant_role_prefix)
    head = tenant_script().get_current_head()
    try:
        async with engine.begin() as conn:
            # The registry row comes first: a concurrent create of the same slug waits on
            # the unique index and then fails cleanly with 409.
            await repo.insert_tenant(
                conn,
                id=uuid.uuid4(),
                slug=slug,
                name=name,
                plan=plan,
                status="provisioning",
                rate_limit=rate_limit,
                schema=location.schema,
                db_role=location.role,
            )
            for step_name, step in PROVISIONING_STEPS:
                if step_name == "create_tables" and (from_migrations or at_revision):
                    step = functools.partial(_tables_from_migrations, to_rev=at_revision)
                await step(conn, location)
            if then is not None:
                await then(conn, location)
            if at_revision is not None:
                await _tables_from_migrations(conn, location)  # to head
            record = await repo.update_tenant_any_status(
                conn, slug, status="active", schema_version=head
            )
            await admin_audit.record(
                conn,
                actor=actor,
                action=action,
                tenant=record,
                changes={"name": name, "plan": plan, "rate_limit": rate_limit, **(details or {})},
            )
    except IntegrityError as exc:
        if "uq_tenants" in str(exc.orig) or "pk_tenants" in str(exc.orig):
            raise TenantExists(f"A tenant with slug {slug!r} already exists.") from exc
        if UnknownPlan.raised_by(exc):
            raise UnknownPlan(plan) from exc
        raise
    except ProgrammingError as exc:
        # Roles are server-wide: another database on this server (or a stale role) may hold
        # the name. Nothing was created here; say so instead of failing with a 500.
        if getattr(exc.orig, "sqlstate", None) == DUPLICATE_OBJECT:
            raise TenantExists(
                f"The database role for tenant {slug!r} already exists on the server; "
                "set DB_TENANT_ROLE_PREFIX when several Tessera databases share a server."
            ) from exc
        raise
    return record
