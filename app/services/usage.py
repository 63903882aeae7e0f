"""Tenant usage: the kept figures (rows per table, storage) refreshed by a periodic job,
the request counts (app/services/request_usage.py), and quota use in percent.

Cheap at 10,000 tenants because nothing is measured when it is asked for: the refresh reads
only the catalog and the statistics views, for every tenant in one statement, into one row
per tenant of platform.tenant_usage, at most once per USAGE_REFRESH_SECONDS across all
replicas (a transaction advisory lock: the replica that gets it refreshes, the others skip);
a tenant's usage is one indexed row and one Redis call; the fleet listing is an index scan
on (storage_bytes DESC, tenant_id DESC) (docs/decisions/0025-plans-quotas-usage.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, literal, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.repositories import tenants as tenants_repo
from app.db.repositories import usage as repo
from app.db.repositories.usage import UsageRecord
from app.services.pagination import decode_position, encode_position
from app.services.quotas import QUOTA_NAMES, QuotaName, percent_used
from app.services.request_usage import RequestCounts, RequestTally
from app.services.tenant_keys import TenantKeys
from app.services.tenants import TenantNotFound

logger = logging.getLogger("tessera.usage")

# Held by the replica refreshing; the others skip their turn instead of measuring again.
_REFRESH_LOCK = select(func.pg_try_advisory_xact_lock(func.hashtext(literal("tessera.usage"))))


@dataclass(frozen=True, slots=True)
class QuotaUse:
    quota: QuotaName
    limit: int | None  # None: unlimited
    usage: int
    percent: float | None  # None: unlimited


@dataclass(frozen=True, slots=True)
class KeptUsage:
    """A tenant's kept figures and its quota use, as of `refreshed_at` (None: never
    measured yet, every figure 0)."""

    slug: str
    storage_bytes: int
    rows: dict[str, int]
    refreshed_at: datetime | None
    quotas: list[QuotaUse]


@dataclass(frozen=True, slots=True)
class TenantUsage:
    kept: KeptUsage
    requests: RequestCounts | None  # None: Redis did not answer


def quota_uses(
    storage_bytes: int, rows: dict[str, int], limits: dict[QuotaName, int | None]
) -> list[QuotaUse]:
    used: dict[QuotaName, int] = {
        "max_projects": int(rows.get("projects", 0)),
        "max_tasks": int(rows.get("tasks", 0)),
        "max_storage_bytes": storage_bytes,
    }
    return [
        QuotaUse(name, limits[name], used[name], percent_used(used[name], limits[name]))
        for name in QUOTA_NAMES
    ]


def _kept(record: UsageRecord) -> KeptUsage:
    limits: dict[QuotaName, int | None] = {
        "max_projects": record.max_projects,
        "max_tasks": record.max_tasks,
        "max_storage_bytes": record.max_storage_bytes,
    }
    return KeptUsage(
        record.slug,
        record.storage_bytes,
        record.rows,
        record.refreshed_at,
        quota_uses(record.storage_bytes, record.rows, limits),
    )


async def refresh(engine: AsyncEngine, slugs: list[str] | None = None) -> int:
    """Measure every tenant (or those of `slugs`) now; how many were measured."""
    measured = await _measure(engine, slugs, unless_running=False)
    assert measured is not None
    return measured


async def refresh_unless_running(engine: AsyncEngine) -> int | None:
    """Measure every tenant unless another replica is at it (then None)."""
    return await _measure(engine, None, unless_running=True)


async def _measure(
    engine: AsyncEngine, slugs: list[str] | None, *, unless_running: bool
) -> int | None:
    """The refresh on a connection of its own that never goes back to the pool: reading the
    catalog of every tenant's schema grows its backend's catalog cache by about 40 KiB a
    schema (429 MiB measured at 10,000 tenants), which a pooled connection would keep."""
    async with engine.connect() as conn:
        try:
            async with conn.begin():
                if unless_running and not await conn.scalar(_REFRESH_LOCK):
                    return None
                return await repo.refresh(conn, slugs)
        finally:
            await conn.invalidate()


async def tenant_usage(engine: AsyncEngine, tally: RequestTally, slug: str) -> TenantUsage:
    async with engine.connect() as conn:
        found = await tenants_repo.get_with_plan(conn, slug)
        if found is None or found[0].status == "provisioning":
            raise TenantNotFound(f"No tenant with slug {slug!r}.")
        record = await repo.get(conn, found[0].id)
    if record is not None:
        kept = _kept(record)
    else:
        plan = found[1]
        limits: dict[QuotaName, int | None] = {name: getattr(plan, name) for name in QUOTA_NAMES}
        kept = KeptUsage(slug, 0, {}, None, quota_uses(0, {}, limits))
    return TenantUsage(kept, await tally.counts(TenantKeys(slug, found[0].id)))


async def fleet_page(
    engine: AsyncEngine, *, limit: int, cursor: str | None
) -> tuple[list[KeptUsage], str | None]:
    """Tenants by kept storage, largest first; measured tenants only."""
    after = None if cursor is None else decode_position(cursor)
    async with engine.connect() as conn:
        records = await repo.largest_first(conn, limit=limit + 1, after=after)
    if len(records) <= limit:
        return [_kept(r) for r in records], None
    records = records[:limit]
    last = records[-1]
    return [_kept(r) for r in records], encode_position(last.storage_bytes, last.tenant_id)


async def all_kept(engine: AsyncEngine) -> list[KeptUsage]:
    """Every measured tenant, largest first (the scrape-time gauges)."""
    async with engine.connect() as conn:
        return [_kept(r) for r in await repo.largest_first(conn, limit=None)]


class UsageRefresher:
    """Refreshes the kept figures every `interval` seconds in the background (the app's
    lifespan); one replica at a time does the work."""

    def __init__(self, engine: AsyncEngine, interval: float) -> None:
        self._engine = engine
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._interval > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="tessera usage refresh"
            )

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await refresh_unless_running(self._engine)
            except Exception as exc:  # the next turn tries again; serving goes on
                logger.warning("usage refresh failed: %s", type(exc).__name__)
