"""tenant deletion with a grace period (status deleted, purge_after); admin audit log

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

A deleted tenant keeps its row, schema and role until `purge_after`, when `tessera tenants
purge` drops them (docs/decisions/0023-deletion-grace-and-admin-audit.md). Every admin action
is recorded in platform.admin_audit_events, which outlives the tenants it names.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "tenants",
        sa.Column("purge_after", sa.DateTime(timezone=True), nullable=True),
        schema="platform",
    )
    op.drop_constraint(op.f("ck_tenants_status"), "tenants", schema="platform", type_="check")
    op.create_check_constraint(
        op.f("ck_tenants_status"),
        "tenants",
        "status IN ('provisioning', 'active', 'suspended', 'deleted')",
        schema="platform",
    )
    op.create_check_constraint(
        op.f("ck_tenants_purge_after"),
        "tenants",
        "(status = 'deleted') = (purge_after IS NOT NULL)",
        schema="platform",
    )
    op.create_index(
        "ix_tenants_purge_after",
        "tenants",
        ["purge_after"],
        schema="platform",
        postgresql_where=sa.text("status = 'deleted'"),
    )
    op.create_table(
        "admin_audit_events",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=True),
        sa.Column("tenant_slug", sa.Text(), nullable=True),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.Column(
            "changes",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name="pk_admin_audit_events"),
        schema="platform",
    )
    op.create_index(
        "ix_admin_audit_events_at_id",
        "admin_audit_events",
        [sa.text("at DESC"), sa.text("id DESC")],
        schema="platform",
    )
    op.create_index(
        "ix_admin_audit_events_tenant_slug_at_id",
        "admin_audit_events",
        ["tenant_slug", sa.text("at DESC"), sa.text("id DESC")],
        schema="platform",
    )


def downgrade() -> None:
    op.drop_table("admin_audit_events", schema="platform")
    # Deleted tenants cannot be represented before this revision: they become suspended.
    op.execute(
        "UPDATE platform.tenants SET status = 'suspended', purge_after = NULL "
        "WHERE status = 'deleted'"
    )
    op.drop_index("ix_tenants_purge_after", "tenants", schema="platform")
    op.drop_constraint(op.f("ck_tenants_purge_after"), "tenants", schema="platform", type_="check")
    op.drop_constraint(op.f("ck_tenants_status"), "tenants", schema="platform", type_="check")
    op.create_check_constraint(
        op.f("ck_tenants_status"),
        "tenants",
        "status IN ('provisioning', 'active', 'suspended')",
        schema="platform",
    )
    op.drop_column("tenants", "purge_after", schema="platform")
