"""Plans: the limits and quotas tenants get by name, managed by the admin API.

A change of a plan reaches every replica's tenant registry through the trigger on
platform.plans (shared migration 0004), which notifies every tenant; a plan cannot be
deleted while a tenant names it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.errors import Conflict, NotFound
from app.db.repositories import plans as repo
from app.db.repositories.plans import PlanRecord as PlanRecord  # the service's type


class PlanNotFound(NotFound):
    code = "plan_not_found"

    def __init__(self, name: str) -> None:
        super().__init__(f"No plan named {name!r}.")


class PlanExists(Conflict):
    code = "plan_exists"

    def __init__(self, name: str) -> None:
        super().__init__(f"A plan named {name!r} already exists.")


class PlanInUse(Conflict):
    code = "plan_in_use"

    def __init__(self, name: str) -> None:
        super().__init__(f"Tenants are on plan {name!r}; move them to another plan first.")


async def create_plan(engine: AsyncEngine, **values: Any) -> PlanRecord:
    try:
        async with engine.begin() as conn:
            return await repo.insert_plan(conn, **values)
    except IntegrityError as exc:
        if "pk_plans" in str(exc.orig):
            raise PlanExists(str(values["name"])) from exc
        raise


async def list_plans(engine: AsyncEngine) -> list[PlanRecord]:
    async with engine.connect() as conn:
        return await repo.list_plans(conn)


async def get_plan(engine: AsyncEngine, name: str) -> PlanRecord:
    async with engine.connect() as conn:
        record = await repo.get_plan(conn, name)
    if record is None:
        raise PlanNotFound(name)
    return record


async def update_plan(engine: AsyncEngine, name: str, **changes: Any) -> PlanRecord:
    """Apply `changes` (None: the server's default, or no quota); every tenant of the plan
    has them on every replica within a second."""
    async with engine.begin() as conn:
        if not changes:
            record = await repo.get_plan(conn, name)
        else:
            record = await repo.update_plan(conn, name, **changes)
    if record is None:
        raise PlanNotFound(name)
    return record


async def delete_plan(engine: AsyncEngine, name: str) -> None:
    """Delete a plan no tenant names (else 409 plan_in_use). The plan is locked first, so a
    tenant create or move onto it waits for this transaction and then fails 422."""
    async with engine.begin() as conn:
        if await repo.lock_plan(conn, name) is None:
            raise PlanNotFound(name)
        if await repo.in_use(conn, name):
            raise PlanInUse(name)
        await repo.delete_plan(conn, name)


async def rate_limits(engine: AsyncEngine) -> dict[str, str | None]:
    """Plan name → its rate limit (None: RATE_LIMIT_DEFAULT), for showing tenants' limits."""
    return {plan.name: plan.rate_limit for plan in await list_plans(engine)}
