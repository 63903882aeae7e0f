"""Alembic environment for one tenant schema; autogenerate compares against `tenant_template`."""

from alembic import context

from app.db.migrate import run_cli_environment

run_cli_environment(context, side="tenant")
