"""The one place that pins a connection to a tenant, and the DDL that creates or drops one.

A tenant is a schema `tenant_<slug>` plus a role that owns nothing and may only use that
schema. Requests, the CLI and background work all enter a tenant through `pin_tenant`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.models.base import PLATFORM_SCHEMA, tenant_metadata

SLUG_PATTERN = r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$"
SLUG_MIN, SLUG_MAX = 3, 40
RESERVED_SLUGS = frozenset(
    {"admin", "public", "api", "www", "system", "root", "postgres", "template", "default"}
)
_SLUG_RE = re.compile(SLUG_PATTERN)
_IDENTIFIER_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True, slots=True)
class TenantSchema:
    """Where a tenant lives in PostgreSQL."""

    schema: str
    role: str


def slug_problem(slug: str) -> str | None:
    """Why `slug` cannot name a tenant, or None when it can."""
    if not SLUG_MIN <= len(slug) <= SLUG_MAX:
        return f"must be {SLUG_MIN}-{SLUG_MAX} characters"
    if not _SLUG_RE.fullmatch(slug):
        return (
            "must start with a letter and be lowercase letters and digits, "
            "in groups joined by single hyphens"
        )
    if slug in RESERVED_SLUGS or slug.startswith("pg"):
        return "is reserved"
    return None


def schema_for(slug: str, role_prefix: str = "") -> TenantSchema:
    """Derive the schema and role names; both stay plain identifiers under 63 bytes."""
    if slug_problem(slug) is not None:
        raise ValueError(f"invalid tenant slug {slug!r}")
    schema = "tenant_" + slug.replace("-", "_")
    return TenantSchema(schema=schema, role=role_prefix + schema)


def quote_ident(name: str) -> str:
    """Double-quote an identifier we derived ourselves (checked, so no escaping is needed)."""
    if not _IDENTIFIER_RE.fullmatch(name):
        raise ValueError(f"not a safe identifier: {name!r}")
    return '"' + name + '"'


def pin_sql(tenant: TenantSchema) -> str:
    """The statement that pins a transaction to `tenant`, with the names inlined.

    Inlining is safe because both names are identifiers we derived and checked
    (`quote_ident` refuses anything else), and it lets the pin travel in the same
    simple-protocol round trip as BEGIN.
    """
    search_path = quote_ident(tenant.schema)
    role = quote_ident(tenant.role)[1:-1]
    return (
        f"SELECT set_config('search_path', '{search_path}', true), "
        f"set_config('role', '{role}', true)"
    )


def begin_pinned_sql(tenant: TenantSchema) -> str:
    """BEGIN and the pin, for one simple-protocol round trip."""
    return "BEGIN; " + pin_sql(tenant)


async def pin_tenant(conn: AsyncConnection, tenant: TenantSchema) -> None:
    """Pin the open transaction to `tenant`: its schema first on the path, its role in force.

    Both settings are transaction-local (`is_local = true`), so they end with COMMIT or
    ROLLBACK and a pooled connection can never carry them into another tenant's request;
    this also holds behind PgBouncer in transaction mode. One round trip.
    """
    await conn.exec_driver_sql(pin_sql(tenant))


_OWNER_PATH_SQL = text("SELECT set_config('search_path', :search_path, true)")


def pin_schema_as_owner(conn: Connection, schema: str) -> None:
    """Point the open transaction at a tenant schema, keeping the owner's role: for DDL only
    (provisioning and migrations), never for a request. Synchronous, for run_sync callbacks."""
    conn.execute(_OWNER_PATH_SQL, {"search_path": quote_ident(schema)})


# --- provisioning DDL --------------------------------------------------------------


async def create_role(conn: AsyncConnection, tenant: TenantSchema) -> None:
    # LOGIN without a password: password authentication can never admit it, while Citus can
    # still open worker connections as this role (it fails with NOLOGIN).
    role = quote_ident(tenant.role)
    await conn.execute(text(f"CREATE ROLE {role} LOGIN NOINHERIT"))
    await conn.execute(text(f"GRANT {role} TO CURRENT_USER"))


async def create_schema(conn: AsyncConnection, tenant: TenantSchema) -> None:
    await conn.execute(text(f"CREATE SCHEMA {quote_ident(tenant.schema)}"))


async def create_tables(conn: AsyncConnection, tenant: TenantSchema) -> None:
    """Build the tenant tables from the models (the fast path; a test proves it equals the
    migrations' result)."""
    await conn.run_sync(_create_tables_sync, tenant.schema)


def _create_tables_sync(conn: Connection, schema: str) -> None:
    pin_schema_as_owner(conn, schema)
    tenant_metadata.create_all(conn)


async def grant_privileges(conn: AsyncConnection, tenant: TenantSchema) -> None:
    schema, role = quote_ident(tenant.schema), quote_ident(tenant.role)
    statements = [
        f"REVOKE ALL ON SCHEMA {schema} FROM PUBLIC",
        f"GRANT USAGE ON SCHEMA {schema} TO {role}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {role}",
        # Tables that later migrations add are covered too.
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} "
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {role}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT USAGE, SELECT ON SEQUENCES TO {role}",
    ]
    for statement in statements:
        await conn.execute(text(statement))


async def drop_tenant_objects(conn: AsyncConnection, tenant: TenantSchema) -> None:
    """Drop the schema with its data, then the role (its grants first). Transactional."""
    schema, role = quote_ident(tenant.schema), quote_ident(tenant.role)
    await conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    exists = await conn.scalar(
        text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": tenant.role}
    )
    if exists:
        await conn.execute(text(f"DROP OWNED BY {role}"))
        await conn.execute(text(f"DROP ROLE {role}"))


async def secure_platform_schema(conn: AsyncConnection) -> None:
    """Tenant roles never read the registry."""
    await conn.execute(text(f"REVOKE ALL ON SCHEMA {quote_ident(PLATFORM_SCHEMA)} FROM PUBLIC"))
