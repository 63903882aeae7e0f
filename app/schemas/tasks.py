"""Tenant API models for tasks (CONTRACT section 8)."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from app.schemas.common import RequestModel, SafeStr
from app.schemas.projects import Description, refuse_null

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


class TaskCreate(RequestModel):
    title: TaskTitle
    description: Description | None = None
    status: TaskStatus = "todo"
    priority: TaskPriority = "medium"
    assignee: Assignee | None = None
    labels: Labels = Field(default_factory=list)
    due_date: date | None = None


class TaskUpdate(RequestModel):
    """Only the fields sent change; `null` clears description, assignee and due_date, and is a
    422 for the others."""

    title: TaskTitle | None = None
    description: Description | None = None
    status: TaskStatus | None = None
    priority: TaskPriority | None = None
    assignee: Assignee | None = None
    labels: Labels | None = None
    due_date: date | None = None

    _not_null = field_validator("title", "status", "priority", "labels", mode="before")(refuse_null)


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
