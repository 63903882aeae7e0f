"""Alembic environment for the shared `platform` schema (CLI use: revision --autogenerate)."""

from alembic import context

from app.db.migrate import run_cli_environment

run_cli_environment(context, side="shared")
