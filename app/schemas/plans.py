"""Admin API models for plans: the limits and quotas a tenant's plan gives it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field

from app.schemas.common import PatchModel, RequestModel
from app.schemas.tenants import PlanName, RateLimit


def _json_integer(value: Any) -> Any:
    """A JSON integer: a number with no fraction (`3.0` is one), never `true` or `"3"`."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ValueError("must be an integer")
    return value


INT_MAX = 2**31 - 1  # PostgreSQL integer
# The largest integer a JSON number holds exactly everywhere (8 PiB): 2**63 - 1 would be
# rounded by clients that read JSON numbers as doubles.
STORAGE_MAX = 2**53 - 1

PlanRateLimit = Annotated[
    RateLimit, Field(description="null: RATE_LIMIT_DEFAULT (a tenant's own limit still wins)")
]
# The bounds on the integer itself (not on the union with null), so the document has them.
Concurrency = Annotated[
    Annotated[int, Field(ge=1, le=10_000), BeforeValidator(_json_integer)] | None,
    Field(description="null: the server's per-tenant default"),
]
StatementTimeout = Annotated[
    Annotated[int, Field(ge=1, le=3_600_000), BeforeValidator(_json_integer)] | None,
    Field(description="Milliseconds; null: the server's default"),
]
CountQuota = Annotated[
    Annotated[int, Field(ge=0, le=INT_MAX), BeforeValidator(_json_integer)] | None,
    Field(description="null: unlimited"),
]
StorageQuota = Annotated[
    Annotated[int, Field(ge=0, le=STORAGE_MAX), BeforeValidator(_json_integer)] | None,
    Field(description="Bytes of the tenant's schema; null: unlimited"),
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
