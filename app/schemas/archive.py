"""The manifest of a tenant archive (`tessera tenants export`, `POST .../export`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.schemas.tenants import PlanName, RateLimit, Slug, TenantName

ARCHIVE_FORMAT: Literal["tessera-tenant-archive"] = "tessera-tenant-archive"
ARCHIVE_FORMAT_VERSION: Literal[1] = 1
ARCHIVE_MEDIA_TYPE = "application/vnd.tessera.tenant-archive"
MANIFEST_NAME = "manifest.json"

# A table or column name as PostgreSQL shows an unquoted one: all this build ever writes.
Identifier = Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,62}$")]


class ArchiveTable(BaseModel):
    """One table of the archive: its member `<name>.copy` holds its rows in COPY text format."""

    model_config = ConfigDict(extra="forbid")

    name: Identifier
    columns: list[Identifier] = Field(min_length=1)
    rows: int = Field(ge=0)
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @property
    def member(self) -> str:
        return f"{self.name}.copy"


class ArchiveManifest(BaseModel):
    """What an archive holds, written first: import checks it before reading any row."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["tessera-tenant-archive"] = ARCHIVE_FORMAT
    format_version: Literal[1] = ARCHIVE_FORMAT_VERSION
    slug: Slug
    name: TenantName
    plan: PlanName
    rate_limit: RateLimit = None
    # The tenant migration revision the rows were exported at (migrations/tenant).
    schema_version: str = Field(pattern=r"^[A-Za-z0-9_]{1,64}$")
    copy_format: Literal["text"] = "text"
    exported_at: datetime
    # In load order: a table comes after every table its foreign keys reference.
    tables: list[ArchiveTable]

    @model_validator(mode="after")
    def _tables_unique(self) -> ArchiveManifest:
        names = [table.name for table in self.tables]
        if len(set(names)) != len(names):
            raise ValueError("a table is listed twice")
        return self
