"""Tenant API model for audit events (CONTRACT section 8)."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict


class AuditEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    at: datetime
    actor: str
    action: str
    resource_type: str
    resource_id: uuid.UUID
    request_id: str | None
