"""The shared `platform` schema: the tenant registry, the plans, the kept usage figures."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Table,
    Text,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from app.db.models.base import shared_metadata

# A plan's limits; NULL: the server's default (rate limit, concurrency, statement timeout)
# or no quota at all (projects, tasks, storage).
plans = Table(
    "plans",
    shared_metadata,
    Column("name", Text, primary_key=True),
    Column("rate_limit", Text, nullable=True),
    Column("max_concurrent_transactions", Integer, nullable=True),
    Column("statement_timeout_ms", Integer, nullable=True),
    Column("max_projects", Integer, nullable=True),
    Column("max_tasks", Integer, nullable=True),
    Column("max_storage_bytes", BigInteger, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint(
        "max_concurrent_transactions IS NULL OR max_concurrent_transactions >= 1",
        name="max_concurrent_transactions",
    ),
    CheckConstraint(
        "statement_timeout_ms IS NULL OR statement_timeout_ms >= 1", name="statement_timeout_ms"
    ),
    CheckConstraint("max_projects IS NULL OR max_projects >= 0", name="max_projects"),
    CheckConstraint("max_tasks IS NULL OR max_tasks >= 0", name="max_tasks"),
    CheckConstraint(
        "max_storage_bytes IS NULL OR max_storage_bytes >= 0", name="max_storage_bytes"
    ),
)

tenants = Table(
    "tenants",
    shared_metadata,
    Column("id", Uuid, primary_key=True),
    Column("slug", Text, nullable=False, unique=True),
    Column("name", Text, nullable=False),
    Column("plan", Text, ForeignKey(plans.c.name), nullable=False, index=True),
    Column("status", Text, nullable=False),
    # NULL: the tenant follows its plan's rate limit, else RATE_LIMIT_DEFAULT.
    Column("rate_limit", Text, nullable=True),
    Column("schema", Text, nullable=False, unique=True),
    Column("db_role", Text, nullable=False, unique=True),
    Column("schema_version", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # Set exactly while the tenant is `deleted`: when `tessera tenants purge` may drop it.
    Column("purge_after", DateTime(timezone=True), nullable=True),
    CheckConstraint("status IN ('provisioning', 'active', 'suspended', 'deleted')", name="status"),
    CheckConstraint("(status = 'deleted') = (purge_after IS NOT NULL)", name="purge_after"),
)

# What `tessera tenants purge` looks for: deleted tenants past their grace period.
Index(
    "ix_tenants_purge_after",
    tenants.c.purge_after,
    postgresql_where=text("status = 'deleted'"),
)

# Every admin action, kept after its tenant is purged (so no foreign key to `tenants`).
admin_audit_events = Table(
    "admin_audit_events",
    shared_metadata,
    Column("id", Uuid, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("actor", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("tenant_id", Uuid, nullable=True),
    Column("tenant_slug", Text, nullable=True),
    Column("request_id", Text, nullable=True),
    Column("changes", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
)
Index("ix_admin_audit_events_at_id", admin_audit_events.c.at.desc(), admin_audit_events.c.id.desc())
Index(
    "ix_admin_audit_events_tenant_slug_at_id",
    admin_audit_events.c.tenant_slug,
    admin_audit_events.c.at.desc(),
    admin_audit_events.c.id.desc(),
)

# One row per tenant, written by `tessera tenants usage refresh` (and the app's background
# refresh): what its schema holds, as of `refreshed_at`.
tenant_usage = Table(
    "tenant_usage",
    shared_metadata,
    Column("tenant_id", Uuid, ForeignKey(tenants.c.id, ondelete="CASCADE"), primary_key=True),
    Column("storage_bytes", BigInteger, nullable=False),
    Column("rows", JSONB, nullable=False),  # table name → live rows
    Column("refreshed_at", DateTime(timezone=True), nullable=False),
    Index(
        "ix_tenant_usage_storage_bytes_tenant_id",
        text("storage_bytes DESC"),
        text("tenant_id DESC"),
    ),
)
