"""The one place that pins a connection to a tenant, and the DDL that creates or drops one.

A tenant is a schema `tenant_<slug>` plus a role that owns nothing and may only use that
schema. Requests, the CLI and background work all enter a tenant through `pin_tenant`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.schema import CreateIndex, CreateTable

from app.core.slugs import slug_problem
from app.db.citus import batches_for_citus, is_citus
from app.db.models.base import PLATFORM_SCHEMA, tenant_metadata

_IDENTIFIER_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True, slots=True)
class TenantSchema:
    """Where a tenant lives in PostgreSQL."""

    schema: str
    role: str


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


def pin_sql(tenant: TenantSchema, *, statement_timeout_ms: int | None = None) -> str:
    """The statement that pins a transaction to `tenant`, with the names inlined, and with
    `statement_timeout_ms` the transaction's statement timeout (the tenant's plan).

    Inlining is safe because both names are identifiers we derived and checked
    (`quote_ident` refuses anything else) and the timeout is an int, and it lets the pin
    travel in the same simple-protocol round trip as BEGIN.
    """
    search_path = quote_ident(tenant.schema)
    role = quote_ident(tenant.role)[1:-1]
    sql = (
        f"SELECT set_config('search_path', '{search_path}', true), "
        f"set_config('role', '{role}', true)"
    )
    if statement_timeout_ms is not None:
        sql += f", set_config('statement_timeout', '{int(statement_timeout_ms)}', true)"
    return sql


@lru_cache(maxsize=4096)
def begin_pinned_sql(
    tenant: TenantSchema, *, read_only: bool = False, statement_timeout_ms: int | None = None
) -> str:
    """BEGIN and the pin (with the statement timeout), for one simple-protocol round trip.
    Kept for the tenants in use: every transaction of the request path starts with it."""
    begin = "BEGIN READ ONLY; " if read_only else "BEGIN; "
    return begin + pin_sql(tenant, statement_timeout_ms=statement_timeout_ms)


async def pin_tenant(conn: AsyncConnection, tenant: TenantSchema) -> None:
    """Pin the open transaction to `tenant`: its schema first on the path, its role in force.

    Both settings are transaction-local (`is_local = true`), so they end with COMMIT or
    ROLLBACK and a pooled connection can never carry them into another tenant's request;
    this also holds behind PgBouncer in transaction mode. One round trip.
    """
    await conn.exec_driver_sql(pin_sql(tenant))


_OWNER_PATH_SQL = text("SELECT set_config('search_path', :search_path, true)")


def owner_pin_sql(schema: str) -> str:
    """pin_schema_as_owner as inlined SQL, for a script of DDL sent in one round trip."""
    return f"SELECT set_config('search_path', '{quote_ident(schema)}', true)"


def pin_schema_as_owner(conn: Connection, schema: str) -> None:
    """Point the open transaction at a tenant schema, keeping the owner's role: for DDL only
    (provisioning and migrations), never for a request. Synchronous, for run_sync callbacks."""
    conn.execute(_OWNER_PATH_SQL, {"search_path": quote_ident(schema)})


# --- provisioning DDL --------------------------------------------------------------


async def run_script(conn: AsyncConnection, statements: Sequence[str]) -> None:
    """Several statements in one round trip (PostgreSQL's simple query protocol), inside the
    transaction `conn` has open: provisioning is a dozen DDL statements, and a round trip
    each was most of its time. On a Citus coordinator the statements it cannot take in a
    script (index statements among them) go on their own, in the same transaction."""
    adapted = (await conn.get_raw_connection()).dbapi_connection
    raw = adapted.driver_connection  # type: ignore[union-attr]
    assert raw is not None and raw.is_in_transaction()  # all or nothing with the rest
    scripts = batches_for_citus(statements) if await is_citus(conn) else [statements]
    for batch in scripts:
        script = ";\n".join(batch)
        try:
            await raw.execute(script)
        except Exception as exc:  # as SQLAlchemy raises it (sqlstate in .orig), as callers expect
            try:
                adapted._handle_exception(exc)  # type: ignore[union-attr]  # noqa: SLF001
            except Exception as translated:
                dbapi_error = adapted.dbapi.Error  # type: ignore[union-attr]
                raise sa_exc.DBAPIError.instance(script, None, translated, dbapi_error) from exc
            raise


async def create_role(conn: AsyncConnection, tenant: TenantSchema) -> None:
    # LOGIN without a password: password authentication can never admit it, while Citus can
    # still open worker connections as this role (it fails with NOLOGIN).
    role = quote_ident(tenant.role)
    await run_script(conn, [f"CREATE ROLE {role} LOGIN NOINHERIT", f"GRANT {role} TO CURRENT_USER"])


async def create_schema(conn: AsyncConnection, tenant: TenantSchema) -> None:
    await conn.execute(text(f"CREATE SCHEMA {quote_ident(tenant.schema)}"))


async def create_tables(
    conn: AsyncConnection, tenant: TenantSchema, then: Sequence[str] = ()
) -> None:
    """Build the tenant tables from the models, then run `then` (the migration stamp) in the
    same round trip (the fast path; a test proves it equals the migrations' result)."""
    await run_script(conn, [owner_pin_sql(tenant.schema), *tenant_tables_ddl(), *then])


@lru_cache(maxsize=1)
def tenant_tables_ddl() -> tuple[str, ...]:
    """CREATE TABLE and CREATE INDEX for every tenant table, in dependency order, as
    `tenant_metadata.create_all` would issue them. Rendered once: the names are unqualified
    (they land in the schema the transaction is pinned to), so one text serves every tenant."""
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    statements: list[str] = []
    for table in tenant_metadata.sorted_tables:
        statements.append(str(CreateTable(table).compile(dialect=dialect)).strip())
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            statements.append(str(CreateIndex(index).compile(dialect=dialect)).strip())
    return tuple(statements)


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
    await run_script(conn, statements)


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
