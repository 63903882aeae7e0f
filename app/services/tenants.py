"""Tenants: lookup (the registry cache), listing and changes. Provisioning is in
app/services/provisioning.py; deletion, restore and purge in app/services/tenant_lifecycle.py."""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
import uuid
from dataclasses import dataclass, field

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.core.config import Settings
from app.core.errors import Conflict, NotFound
from app.db.fair_share import TenantShare
from app.db.migrate import tenant_script
from app.db.repositories import tenants as repo
from app.db.repositories.tenants import PlanLimits
from app.db.repositories.tenants import TenantRecord as TenantRecord  # the service's type
from app.db.tenancy import TenantSchema
from app.db.tenant_changes import EVERY_TENANT, TenantChangeFeed
from app.services import admin_audit
from app.services.admin_audit import SYSTEM_ACTOR
from app.services.pagination import created, cut_page, decode_cursor
from app.services.quotas import UNLIMITED, TenantQuotas, UnknownPlan
from app.services.tenant_keys import TenantKeys

logger = logging.getLogger("tessera.tenants")


class TenantNotFound(NotFound):
    code = "tenant_not_found"


class TenantExists(Conflict):
    code = "tenant_exists"


class TenantActive(Conflict):
    code = "tenant_active"


class TenantDeleted(Conflict):
    """409: a change that only a live tenant takes, asked of a deleted one (restore it)."""

    code = "tenant_deleted"


@dataclass(frozen=True, slots=True)
class Tenant:
    """A tenant as the request path sees it: `keys` places it in Redis (by id, not only by
    slug), `created_at` is when it was created, in Unix seconds cut to the whole second as a
    token's `iat` is (admission refuses tokens issued before it)."""

    id: uuid.UUID
    slug: str
    name: str
    plan: str
    status: str
    rate_limit: str  # its own, else its plan's, else RATE_LIMIT_DEFAULT
    location: TenantSchema
    keys: TenantKeys
    created_at: float
    # Its fair share of the database on each replica, from its plan, else the settings'
    # defaults (None: no cap, no statement timeout), and its plan's quotas.
    max_concurrent_transactions: int | None = None
    statement_timeout_ms: int | None = None
    quotas: TenantQuotas = UNLIMITED
    share: TenantShare = field(init=False, repr=False, compare=False)  # what the pool takes

    def __post_init__(self) -> None:
        share = TenantShare(self.slug, self.max_concurrent_transactions, self.statement_timeout_ms)
        object.__setattr__(self, "share", share)  # built once, not on every request

    @classmethod
    def from_record(
        cls,
        record: TenantRecord,
        settings: Settings,
        plan: PlanLimits | None = None,
        storage_bytes: int | None = None,
    ) -> Tenant:
        plan = plan or PlanLimits()
        return cls(
            id=record.id,
            slug=record.slug,
            name=record.name,
            plan=record.plan,
            status=record.status,
            rate_limit=record.rate_limit or plan.rate_limit or settings.rate_limit_default,
            location=TenantSchema(schema=record.schema, role=record.db_role),
            keys=TenantKeys(record.slug, record.id),
            created_at=float(math.floor(record.created_at.timestamp())),
            max_concurrent_transactions=plan.max_concurrent_transactions
            or settings.tenant_max_concurrent_transactions
            or None,
            statement_timeout_ms=plan.statement_timeout_ms
            or settings.tenant_statement_timeout_ms
            or None,
            quotas=TenantQuotas.of(plan, storage_bytes),
        )


class Unknown(enum.Enum):
    """What TenantRegistry.peek answers when only a load would tell."""

    UNKNOWN = "unknown"


UNKNOWN = Unknown.UNKNOWN


class TenantRegistry:
    """Slug → tenant, from an in-process cache, then PostgreSQL.

    An entry is fresh for `ttl` seconds after its load began. Once `start()`ed, the
    registry also follows the change notifications of `platform.tenants`
    (`app/db/tenant_changes.py`; a change of a plan notifies every tenant): each drops the
    entry it names, and an entry loaded while they were being heard stays fresh as long as
    they are proven to arrive, at most `ttl` seconds behind. Either way a suspend or a plan
    change is in force on every replica within a second; with notifications, a tenant's
    lookups stop costing a query.
    """

    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self._engine = engine
        self._ttl = settings.tenant_registry_ttl_seconds
        # Behind a transaction pooler without a direct URL there is nowhere to LISTEN: a
        # LISTEN there lands on a shared server connection and leaks to other clients.
        self._can_listen = settings.listen_dsn is not None
        self._timeout = settings.db_request_timeout_seconds
        # Admission refuses a token issued before its tenant's created_at less this; kept
        # here, beside the tenants, so the check costs no settings lookup per request.
        self.token_leeway = float(settings.auth_leeway_seconds)
        self._settings = settings
        # slug → (end of its TTL, tenant, listener epoch it was loaded under, or None)
        self._entries: dict[str, tuple[float, Tenant | None, int | None]] = {}
        self._inflight: dict[str, asyncio.Future[Tenant | None]] = {}
        self._changes = 0  # notifications so far: a load that overlapped one is TTL-only
        self._feed = TenantChangeFeed(settings, self._changed, window=self._ttl)

    def start(self) -> None:
        """Follow change notifications in the background (the app's lifespan). Without it
        (the CLI, some tests), or behind a transaction pooler without DATABASE_LISTEN_URL,
        entries live `ttl` seconds."""
        if self._ttl <= 0:
            return
        if not self._can_listen:
            logger.info(
                "tenant registry: DATABASE_POOLER=transaction and no DATABASE_LISTEN_URL, so "
                "no change notifications; lookups use the TTL (%.2f s)",
                self._ttl,
            )
            return
        self._feed.start()

    async def aclose(self) -> None:
        await self._feed.aclose()

    @property
    def live(self) -> bool:
        """Whether change notifications are proven to arrive right now."""
        return self._feed.live

    def peek(self, slug: str) -> Tenant | None | Unknown:
        """The tenant from the in-process cache if its entry is fresh (None: no such tenant),
        else UNKNOWN; never waits (get() loads)."""
        entry = self._entries.get(slug)
        if entry is not None:
            now = time.monotonic()
            feed = self._feed
            if now < entry[0] or (entry[2] == feed.epoch and now < feed.live_until):
                return entry[1]
        return UNKNOWN

    async def get(self, slug: str) -> Tenant | None:
        tenant = self.peek(slug)
        if tenant is not Unknown.UNKNOWN:
            return tenant
        while (inflight := self._inflight.get(slug)) is not None:
            try:
                return await asyncio.shield(inflight)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not inflight.cancelled() or (task is not None and task.cancelling()):
                    raise  # this request itself was cancelled
                # The request that was loading was cancelled, not this one: load anew.
        future: asyncio.Future[Tenant | None] = asyncio.get_running_loop().create_future()
        self._inflight[slug] = future
        started = time.monotonic()
        epoch, changes = self._feed.listening_epoch, self._changes
        try:
            tenant = await self._load(slug)
        except asyncio.CancelledError:
            future.cancel()  # waiters load for themselves
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # consumed here; waiters re-raise their own copy
            raise
        finally:
            self._inflight.pop(slug, None)
        if changes != self._changes:
            epoch = None  # a change arrived mid-load: what was read may predate it
        self._entries[slug] = (started + self._ttl, tenant, epoch)
        if len(self._entries) > 100_000:  # bound memory with many tenants
            self._entries.clear()
        future.set_result(tenant)
        return tenant

    def forget(self, slug: str) -> None:
        """Drop this replica's entry now (the others follow on the change's notification,
        or within the TTL)."""
        self._entries.pop(slug, None)

    def _changed(self, slug: str) -> None:
        self._changes += 1
        if slug == EVERY_TENANT:
            self._entries.clear()
        else:
            self._entries.pop(slug, None)

    async def _load(self, slug: str) -> Tenant | None:
        async with asyncio.timeout(self._timeout), self._engine.connect() as conn:
            found = await repo.get_with_plan(conn, slug)
        if found is None or found[0].status == "provisioning":
            return None
        record, plan, storage_bytes = found
        return Tenant.from_record(record, self._settings, plan, storage_bytes)


async def get_or_404(conn: AsyncConnection, slug: str, *, for_update: bool = False) -> TenantRecord:
    """The tenant (locked for the transaction with `for_update`), or 404 `tenant_not_found`."""
    record = await repo.get_by_slug(conn, slug, for_update=for_update)
    if record is None or record.status == "provisioning":
        raise TenantNotFound(f"No tenant with slug {slug!r}.")
    return record


async def get_tenant(engine: AsyncEngine, slug: str) -> TenantRecord:
    async with engine.connect() as conn:
        return await get_or_404(conn, slug)


async def list_tenants(
    engine: AsyncEngine, *, limit: int, status: str | None, cursor: str | None
) -> tuple[list[TenantRecord], str | None]:
    after = None if cursor is None else decode_cursor(cursor)
    async with engine.connect() as conn:
        records = await repo.list_page(conn, limit=limit + 1, status=status, after=after)
    return cut_page(records, limit, created)


# The action a status change records (any other change is `tenant.updated`).
STATUS_ACTIONS = {"suspended": "tenant.suspended", "active": "tenant.resumed"}


async def update_tenant(
    engine: AsyncEngine, slug: str, *, actor: str = SYSTEM_ACTOR, **changes: object
) -> TenantRecord:
    """Change a live tenant (name, plan, rate limit, or status active/suspended), recording
    the admin action with what changed; a deleted tenant answers 409 `tenant_deleted`."""
    status = changes.get("status")
    if status is not None and status not in STATUS_ACTIONS:
        raise ValueError(f"update_tenant cannot set status {status!r}")
    try:
        async with engine.begin() as conn:
            before = await get_or_404(conn, slug, for_update=True)
            if before.status == "deleted":
                raise TenantDeleted(f"Tenant {slug!r} is deleted; restore it before changing it.")
            record = before
            if changes:
                updated = await repo.update_tenant(conn, slug, **changes)
                assert updated is not None  # the row is locked, and live
                record = updated
            diff = {
                field: {"from": getattr(before, field), "to": value}
                for field, value in changes.items()
                if getattr(before, field) != value
            }
            action = STATUS_ACTIONS[str(status)] if status is not None else "tenant.updated"
            await admin_audit.record(conn, actor=actor, action=action, tenant=record, changes=diff)
    except IntegrityError as exc:
        if UnknownPlan.raised_by(exc):
            raise UnknownPlan(str(changes.get("plan"))) from exc
        raise
    return record


async def count_by_status(engine: AsyncEngine, head: str | None) -> list[tuple[str, int, int]]:
    """Per status: how many tenants, and how many of them are not at `head` (for /metrics)."""
    return await repo.count_by_status(engine, head)


def tenant_migrations_head() -> str | None:
    """The head revision of the tenant migrations (read once per process)."""
    return tenant_script().get_current_head()
