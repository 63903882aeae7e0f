"""The tenant registry in the shared `platform` schema."""

from __future__ import annotations

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    Index,
    Table,
    Text,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from app.db.models.base import shared_metadata

tenants = Table(
    "tenants",
    shared_metadata,
    Column("id", Uuid, primary_key=True),
    Column("slug", Text, nullable=False, unique=True),
    Column("name", Text, nullable=False),
    Column("plan", Text, nullable=False),
    Column("status", Text, nullable=False),
    # NULL: the tenant follows RATE_LIMIT_DEFAULT.
    Column("rate_limit", Text, nullable=True),
    Column("schema", Text, nullable=False, unique=True),
    Column("db_role", Text, nullable=False, unique=True),
    Column("schema_version", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # Set exactly while the tenant is `deleted`: when `tessera tenants purge` may drop it.
    Column("purge_after", DateTime(timezone=True), nullable=True),
    CheckConstraint("plan IN ('free', 'pro', 'enterprise')", name="plan"),
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
