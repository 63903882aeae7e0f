"""Tenant API models for tasks (CONTRACT section 8)."""

from __future__ import annotations

import re
import uuid
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from app.schemas.common import Omittable, PatchModel, RequestModel, SafeStr
from app.schemas.projects import Description

TaskStatus = Literal["todo", "in_progress", "done"]
TaskPriority = Literal["low", "medium", "high"]
MAX_LABELS = 20

TaskTitle = Annotated[SafeStr, Field(min_length=1, max_length=500)]
Assignee = Annotated[SafeStr, Field(min_length=1, max_length=200)]
Label = Annotated[SafeStr, Field(min_length=1, max_length=50)]


def _dedupe(labels: list[str]) -> list[str]:
    # Labels are a set to the user; duplicates are dropped (first occurrence kept, order kept)
    # rather than refused. The 20-label limit applies to the list as sent.
    return list(dict.fromkeys(labels))


Labels = Annotated[list[Label], Field(max_length=MAX_LABELS), AfterValidator(_dedupe)]

_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _iso_date(value: Any) -> Any:
    # The document says `format: date` (RFC 3339 full-date); Pydantic alone would also take a
    # number or a numeric string as seconds since 1970, and a datetime string.
    if value is not None and not (isinstance(value, str) and _ISO_DATE.fullmatch(value)):
        raise ValueError("must be a date as YYYY-MM-DD")
    return value


DueDate = Annotated[date, BeforeValidator(_iso_date)]


class TaskCreate(RequestModel):
    title: TaskTitle
    description: Description | None = None
    status: TaskStatus = "todo"
    priority: TaskPriority = "medium"
    assignee: Assignee | None = None
    labels: Labels = Field(default_factory=list)
    due_date: DueDate | None = None


class TaskUpdate(PatchModel):
    """Only the fields sent change; `null` clears description, assignee and due_date, and is a
    422 for the others."""

    title: Omittable[TaskTitle] = None
    description: Description | None = None
    status: Omittable[TaskStatus] = None
    priority: Omittable[TaskPriority] = None
    assignee: Assignee | None = None
    labels: Omittable[Labels] = None
    due_date: DueDate | None = None


class TaskOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    project_id: uuid.UUID
    title: str
    description: str | None
    status: TaskStatus
    priority: TaskPriority
    assignee: str | None
    labels: list[str]
    due_date: date | None
    created_by: str
    created_at: datetime
    updated_at: datetime
    version: int
