"""Admin API models for tenant usage."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class QuotaUseOut(BaseModel):
    quota: str = Field(description="`max_projects`, `max_tasks` or `max_storage_bytes`")
    limit: int | None = Field(description="The plan's quota; null: unlimited")
    usage: int = Field(description="From the kept figures, as of `refreshed_at`")
    percent: float | None = Field(description="usage / limit in percent; null: unlimited")


class RequestsOut(BaseModel):
    """Requests by status class (`1xx` ... `5xx`), refused ones included."""

    last_hour: dict[str, int] = Field(description="The 12 latest 5-minute buckets")
    last_day: dict[str, int] = Field(description="The 24 latest hour buckets")


class KeptUsageOut(BaseModel):
    tenant: str
    storage_bytes: int = Field(description="The tenant schema's tables, indexes and TOAST")
    rows: dict[str, int] = Field(description="Live rows per table, from PostgreSQL statistics")
    refreshed_at: datetime | None = Field(description="When measured; null: not yet")
    quotas: list[QuotaUseOut]


class TenantUsageOut(KeptUsageOut):
    requests: RequestsOut | None = Field(description="null: Redis did not answer")
    last_request_at: datetime | None
