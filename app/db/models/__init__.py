"""SQLAlchemy Core tables: the shared `platform` schema and one tenant schema, kept apart.

Importing the package registers every table on its metadata, so `tenant_metadata` is
complete wherever it is used (provisioning, migrations, autogenerate).
"""

from app.db.models import shared, tenant

__all__ = ["shared", "tenant"]
