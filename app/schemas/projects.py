"""Tenant API models for projects (CONTRACT section 8)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.schemas.common import RequestModel, SafeStr

ProjectName = Annotated[SafeStr, Field(min_length=1, max_length=200)]
Description = Annotated[SafeStr, Field(max_length=10_000)]


def refuse_null(value: Any) -> Any:
    """PATCH: a field may be left out, but `null` only where the resource allows it."""
    if value is None:
        raise ValueError("may not be null")
    return value


class ProjectCreate(RequestModel):
    name: ProjectName
    description: Description | None = None


class ProjectUpdate(RequestModel):
    """Only the fields sent change; `description: null` clears it, `name: null` is a 422."""

    name: ProjectName | None = None
    description: Description | None = None

    _name_not_null = field_validator("name", mode="before")(refuse_null)


class ProjectOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    description: str | None
    created_at: datetime
    updated_at: datetime
    version: int
