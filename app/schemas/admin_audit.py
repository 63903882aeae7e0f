"""Admin API model for the admin audit log (`GET /admin/v1/audit-events`)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class AdminAuditEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    at: datetime
    actor: str = Field(description="The admin token's `sub`, or `cli:<user>` for a command")
    action: str = Field(examples=["tenant.created", "tenant.deleted", "tenant.purged"])
    tenant_id: uuid.UUID | None
    tenant_slug: str | None
    request_id: str | None = Field(description="The request's X-Request-ID; null for a command")
    changes: dict[str, Any] = Field(
        description='What changed: for an update, `{"field": {"from": ..., "to": ...}}`'
    )
