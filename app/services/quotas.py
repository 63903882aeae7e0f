"""Quotas of a tenant's plan: how many projects and tasks it may hold, and how much storage.

Projects and tasks are counted by the create itself, under a per-tenant transaction lock
(app/db/repositories/quota_counts.py), so concurrent creates never overshoot; storage is
checked against the kept figure of platform.tenant_usage, refreshed every
USAGE_REFRESH_SECONDS, so it may overshoot by what is written within one refresh
(docs/decisions/0025-plans-quotas-usage.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy.exc import IntegrityError

from app.core.errors import Forbidden, UnprocessableEntity
from app.db.repositories.tenants import PlanLimits

QuotaName = Literal["max_projects", "max_tasks", "max_storage_bytes"]
QUOTA_NAMES: tuple[QuotaName, ...] = ("max_projects", "max_tasks", "max_storage_bytes")


class QuotaExceeded(Forbidden):
    """403 `quota_exceeded`: the create would pass a quota of the tenant's plan; the body
    names the quota, its limit and the current usage."""

    code = "quota_exceeded"

    def __init__(self, quota: QuotaName, *, limit: int, usage: int) -> None:
        super().__init__(
            f"This create would exceed the plan's quota {quota} ({usage} of {limit} used).",
            extra={"quota": quota, "limit": limit, "usage": usage},
        )


class UnknownPlan(UnprocessableEntity):
    """422 `unknown_plan`: a tenant create or update names a plan that does not exist."""

    code = "unknown_plan"

    def __init__(self, plan: str) -> None:
        super().__init__(f"No plan named {plan!r}; GET /admin/v1/plans lists them.")

    @staticmethod
    def raised_by(exc: IntegrityError) -> bool:
        """Whether a tenant's insert or update failed on its plan's foreign key."""
        return "fk_tenants_plan_plans" in str(exc.orig)


@dataclass(frozen=True, slots=True)
class TenantQuotas:
    """A tenant's quotas (None: unlimited) and its kept storage figure (None: not yet
    measured)."""

    max_projects: int | None = None
    max_tasks: int | None = None
    max_storage_bytes: int | None = None
    storage_bytes: int | None = None

    @classmethod
    def of(cls, plan: PlanLimits, storage_bytes: int | None) -> TenantQuotas:
        return cls(plan.max_projects, plan.max_tasks, plan.max_storage_bytes, storage_bytes)

    def check_storage(self) -> None:
        """Refuse a create while the kept storage figure is at or past the quota."""
        limit = self.max_storage_bytes
        if limit is not None and self.storage_bytes is not None and self.storage_bytes >= limit:
            raise QuotaExceeded("max_storage_bytes", limit=limit, usage=self.storage_bytes)


UNLIMITED = TenantQuotas()


def percent_used(usage: int, limit: int | None) -> float | None:
    """Use of a quota in percent (None: no quota); a quota of 0 with nothing used is 0 %."""
    if limit is None:
        return None
    if limit == 0:
        return 0.0 if usage == 0 else 100.0
    return round(usage * 100.0 / limit, 2)
