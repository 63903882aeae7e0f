"""Admin API models for plans: the limits and quotas a tenant's plan gives it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field

from app.schemas.common import PatchModel, RequestModel
from app.schemas.tenants import PlanName, RateLimit

INT_MAX = 2**31 - 1  # PostgreSQL integer
BIGINT_MAX = 2**63 - 1

PlanRateLimit = Annotated[
    RateLimit, Field(description="null: RATE_LIMIT_DEFAULT (a tenant's own limit still wins)")
]
Concurrency = Annotated[
    int | None,
    Field(ge=1, le=10_000, description="null: the server's per-tenant default"),
]
StatementTimeout = Annotated[
    int | None,
    Field(ge=1, le=3_600_000, description="Milliseconds; null: the server's default"),
]
CountQuota = Annotated[int | None, Field(ge=0, le=INT_MAX, description="null: unlimited")]
StorageQuota = Annotated[
    int | None,
    Field(ge=0, le=BIGINT_MAX, description="Bytes of the tenant's schema; null: unlimited"),
]


class PlanCreate(RequestModel):
    name: PlanName
    rate_limit: PlanRateLimit = None
    max_concurrent_transactions: Concurrency = None
    statement_timeout_ms: StatementTimeout = None
    max_projects: CountQuota = None
    max_tasks: CountQuota = None
    max_storage_bytes: StorageQuota = None


class PlanUpdate(PatchModel):
    """Fields left out stay as they are; null returns a limit to the server's default, or
    lifts a quota."""

    rate_limit: PlanRateLimit = None
    max_concurrent_transactions: Concurrency = None
    statement_timeout_ms: StatementTimeout = None
    max_projects: CountQuota = None
    max_tasks: CountQuota = None
    max_storage_bytes: StorageQuota = None


class PlanOut(BaseModel):
    name: str
    rate_limit: str | None
    max_concurrent_transactions: int | None
    statement_timeout_ms: int | None
    max_projects: int | None
    max_tasks: int | None
    max_storage_bytes: int | None
    created_at: datetime
    updated_at: datetime
