"""Tables that live in every tenant schema (never schema-qualified)."""

from __future__ import annotations

from sqlalchemy import (
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Table,
    Text,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from app.db.models.base import tenant_metadata

projects = Table(
    "projects",
    tenant_metadata,
    Column("id", Uuid, primary_key=True),
    Column("name", Text, nullable=False),
    Column("description", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("version", Integer, nullable=False, server_default=text("1")),
    Index("ix_projects_created_at_id", text("created_at DESC"), text("id DESC")),
)

tasks = Table(
    "tasks",
    tenant_metadata,
    Column("id", Uuid, primary_key=True),
    Column(
        "project_id",
        Uuid,
        ForeignKey("projects.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("title", Text, nullable=False),
    Column("description", Text, nullable=True),
    Column("status", Text, nullable=False, server_default=text("'todo'")),
    Column("priority", Text, nullable=False, server_default=text("'medium'")),
    Column("assignee", Text, nullable=True),
    Column("labels", ARRAY(Text), nullable=False, server_default=text("'{}'")),
    Column("due_date", Date, nullable=True),
    Column("created_by", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("version", Integer, nullable=False, server_default=text("1")),
    CheckConstraint("status IN ('todo', 'in_progress', 'done')", name="status"),
    CheckConstraint("priority IN ('low', 'medium', 'high')", name="priority"),
    Index("ix_tasks_project_created", "project_id", text("created_at DESC"), text("id DESC")),
    Index(
        "ix_tasks_project_status_created",
        "project_id",
        "status",
        text("created_at DESC"),
        text("id DESC"),
    ),
    Index(
        "ix_tasks_project_assignee_created",
        "project_id",
        "assignee",
        text("created_at DESC"),
        text("id DESC"),
    ),
    Index("ix_tasks_labels", "labels", postgresql_using="gin"),
)

audit_events = Table(
    "audit_events",
    tenant_metadata,
    Column("id", Uuid, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("actor", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("resource_type", Text, nullable=False),
    Column("resource_id", Uuid, nullable=False),
    Column("request_id", Text, nullable=True),
    Index("ix_audit_events_at_id", text("at DESC"), text("id DESC")),
)

idempotency_keys = Table(
    "idempotency_keys",
    tenant_metadata,
    Column("key", Text, primary_key=True),
    Column("request_hash", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("response_status", Integer, nullable=True),
    Column("response_headers", JSONB, nullable=True),
    Column("response_body", LargeBinary, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("state IN ('in_progress', 'done')", name="state"),
    Index("ix_idempotency_keys_expires_at", "expires_at"),
)
