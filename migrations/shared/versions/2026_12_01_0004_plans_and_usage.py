"""plans as data (platform.plans), tenants.plan a foreign key to it, kept usage figures

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-01

The three plans of before are seeded with what they meant then: every limit NULL, that is
RATE_LIMIT_DEFAULT, the server's concurrency and statement timeout, and no quota. A change
of a plan notifies "*" on tessera_tenants, so every replica's registry reloads its tenants
within a second (docs/decisions/0025-plans-quotas-usage.md). platform.tenant_usage holds
the figures `tessera tenants usage refresh` keeps: one row per tenant.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEEDED = ("free", "pro", "enterprise")


def upgrade() -> None:
    op.create_table(
        "plans",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("rate_limit", sa.Text(), nullable=True),
        sa.Column("max_concurrent_transactions", sa.Integer(), nullable=True),
        sa.Column("statement_timeout_ms", sa.Integer(), nullable=True),
        sa.Column("max_projects", sa.Integer(), nullable=True),
        sa.Column("max_tasks", sa.Integer(), nullable=True),
        sa.Column("max_storage_bytes", sa.BigInteger(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(
            "max_concurrent_transactions IS NULL OR max_concurrent_transactions >= 1",
            name=op.f("ck_plans_max_concurrent_transactions"),
        ),
        sa.CheckConstraint(
            "statement_timeout_ms IS NULL OR statement_timeout_ms >= 1",
            name=op.f("ck_plans_statement_timeout_ms"),
        ),
        sa.CheckConstraint(
            "max_projects IS NULL OR max_projects >= 0", name=op.f("ck_plans_max_projects")
        ),
        sa.CheckConstraint("max_tasks IS NULL OR max_tasks >= 0", name=op.f("ck_plans_max_tasks")),
        sa.CheckConstraint(
            "max_storage_bytes IS NULL OR max_storage_bytes >= 0",
            name=op.f("ck_plans_max_storage_bytes"),
        ),
        sa.PrimaryKeyConstraint("name", name="pk_plans"),
        schema="platform",
    )
    op.execute(
        "INSERT INTO platform.plans (name) VALUES "
        + ", ".join(f"('{name}')" for name in SEEDED)
        + " ON CONFLICT DO NOTHING"
    )
    op.drop_constraint(op.f("ck_tenants_plan"), "tenants", schema="platform", type_="check")
    op.create_foreign_key(
        op.f("fk_tenants_plan_plans"),
        "tenants",
        "plans",
        ["plan"],
        ["name"],
        source_schema="platform",
        referent_schema="platform",
    )
    # The foreign key's check on a plan's delete, and "is this plan in use", by index.
    op.create_index(op.f("ix_tenants_plan"), "tenants", ["plan"], schema="platform")
    op.execute(
        """
        CREATE FUNCTION platform.notify_plan_change() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('tessera_tenants', '*');
            RETURN NULL;
        END
        $$
        """
    )
    # A new plan has no tenant yet: only updates and deletes change what tenants see.
    op.execute(
        "CREATE TRIGGER plans_notify AFTER UPDATE OR DELETE OR TRUNCATE ON platform.plans "
        "FOR EACH STATEMENT EXECUTE FUNCTION platform.notify_plan_change()"
    )

    op.create_table(
        "tenant_usage",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("storage_bytes", sa.BigInteger(), nullable=False),
        sa.Column("rows", postgresql.JSONB(), nullable=False),
        sa.Column("refreshed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["platform.tenants.id"],
            name="fk_tenant_usage_tenant_id_tenants",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", name="pk_tenant_usage"),
        schema="platform",
    )
    # The fleet listing's order (largest first) and its keyset.
    op.create_index(
        "ix_tenant_usage_storage_bytes_tenant_id",
        "tenant_usage",
        [sa.text("storage_bytes DESC"), sa.text("tenant_id DESC")],
        schema="platform",
    )


def downgrade() -> None:
    op.drop_table("tenant_usage", schema="platform")
    op.execute("DROP TRIGGER plans_notify ON platform.plans")
    op.execute("DROP FUNCTION platform.notify_plan_change()")
    op.drop_index(op.f("ix_tenants_plan"), "tenants", schema="platform")
    op.drop_constraint(
        op.f("fk_tenants_plan_plans"), "tenants", schema="platform", type_="foreignkey"
    )
    op.execute(
        "UPDATE platform.tenants SET plan = 'free' WHERE plan NOT IN ('free', 'pro', 'enterprise')"
    )
    op.create_check_constraint(
        op.f("ck_tenants_plan"),
        "tenants",
        "plan IN ('free', 'pro', 'enterprise')",
        schema="platform",
    )
    op.drop_table("plans", schema="platform")
