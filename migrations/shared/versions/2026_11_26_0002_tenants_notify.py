"""notify every change of platform.tenants on channel tessera_tenants

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26

Each row written (by the admin API, the CLI or SQL by hand) notifies its slug, the old and
the new one when an UPDATE renames it; a TRUNCATE notifies "*". PostgreSQL delivers the
notifications at commit, never for a rolled-back transaction. The tenant registry drops
the entries they name (docs/decisions/0009-tenant-registry-kept-warm-by-notify.md).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION platform.notify_tenant_change() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'TRUNCATE' THEN
                PERFORM pg_notify('tessera_tenants', '*');
                RETURN NULL;
            END IF;
            IF TG_OP <> 'INSERT' THEN
                PERFORM pg_notify('tessera_tenants', OLD.slug);
            END IF;
            IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.slug <> OLD.slug) THEN
                PERFORM pg_notify('tessera_tenants', NEW.slug);
            END IF;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER tenants_notify AFTER INSERT OR UPDATE OR DELETE ON platform.tenants "
        "FOR EACH ROW EXECUTE FUNCTION platform.notify_tenant_change()"
    )
    op.execute(
        "CREATE TRIGGER tenants_notify_truncate AFTER TRUNCATE ON platform.tenants "
        "FOR EACH STATEMENT EXECUTE FUNCTION platform.notify_tenant_change()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER tenants_notify_truncate ON platform.tenants")
    op.execute("DROP TRIGGER tenants_notify ON platform.tenants")
    op.execute("DROP FUNCTION platform.notify_tenant_change()")
