"""The tenant registry in the shared `platform` schema."""

from __future__ import annotations

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    Table,
    Text,
    Uuid,
    func,
)

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
    CheckConstraint("plan IN ('free', 'pro', 'enterprise')", name="plan"),
    CheckConstraint("status IN ('provisioning', 'active', 'suspended')", name="status"),
)
