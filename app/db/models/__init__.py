"""SQLAlchemy Core tables: the shared `platform` schema and one tenant schema, kept apart."""
