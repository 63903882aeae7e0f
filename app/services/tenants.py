"""Tenant lifecycle: provisioning, lookup (the registry cache), changes and deletion."""

from __future__ import annotations

import asyncio
import enum
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.core.config import Settings
from app.core.errors import Conflict, NotFound
from app.db import tenancy
from app.db.migrate import tenant_script, tenant_stamp_sql, upgrade_tenant_schema
from app.db.repositories import tenants as repo
from app.db.repositories.tenants import PlanLimits
from app.db.repositories.tenants import TenantRecord as TenantRecord  # the service's type
from app.db.tenancy import TenantSchema
from app.db.tenant_changes import EVERY_TENANT, TenantChangeFeed
from app.services.pagination import created, cut_page, decode_cursor
from app.services.quotas import UNLIMITED, TenantQuotas, UnknownPlan

logger = logging.getLogger("tessera.tenants")

DUPLICATE_OBJECT = "42710"  # SQLSTATE of CREATE ROLE on a name already taken


class TenantNotFound(NotFound):
    code = "tenant_not_found"


class TenantExists(Conflict):
    code = "tenant_exists"


class TenantActive(Conflict):
    code = "tenant_active"


@dataclass(frozen=True, slots=True)
class Tenant:
    """A tenant as the request path sees it."""

    id: uuid.UUID
    slug: str
    name: str
    plan: str
    status: str
    rate_limit: str  # its own, else its plan's, else RATE_LIMIT_DEFAULT
    location: TenantSchema
    # From its plan; None: the server's default.
    max_concurrent_transactions: int | None = None
    statement_timeout_ms: int | None = None
    quotas: TenantQuotas = UNLIMITED

    @classmethod
    def from_record(
        cls,
        record: TenantRecord,
        default_rate_limit: str,
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
            rate_limit=record.rate_limit or plan.rate_limit or default_rate_limit,
            location=TenantSchema(schema=record.schema, role=record.db_role),
            max_concurrent_transactions=plan.max_concurrent_transactions,
            statement_timeout_ms=plan.statement_timeout_ms,
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
        self._default_rate_limit = settings.rate_limit_default
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
        return Tenant.from_record(record, self._default_rate_limit, plan, storage_bytes)


# --- provisioning ---------------------------------------------------------------------

ProvisioningStep = Callable[[AsyncConnection, TenantSchema], Awaitable[None]]


async def _tables_from_models(conn: AsyncConnection, location: TenantSchema) -> None:
    await tenancy.create_tables(conn, location, then=tenant_stamp_sql())


async def _tables_from_migrations(conn: AsyncConnection, location: TenantSchema) -> None:
    await upgrade_tenant_schema(conn, location.schema, tenant_script())


# The steps, in order, all inside one transaction: any failure rolls every one back.
PROVISIONING_STEPS: list[tuple[str, ProvisioningStep]] = [
    ("create_role", tenancy.create_role),
    ("create_schema", tenancy.create_schema),
    ("create_tables", _tables_from_models),
    ("grant_privileges", tenancy.grant_privileges),
]


async def create_tenant(
    engine: AsyncEngine,
    settings: Settings,
    *,
    slug: str,
    name: str,
    plan: str,
    rate_limit: str | None,
    from_migrations: bool = False,
) -> TenantRecord:
    """Provision a tenant completely, or leave nothing behind (role, schema, registry row)."""
    location = tenancy.schema_for(slug, settings.db_tenant_role_prefix)
    head = tenant_script().get_current_head()
    try:
        async with engine.begin() as conn:
            # The registry row comes first: a concurrent create of the same slug waits on
            # the unique index and then fails cleanly with 409.
            await repo.insert_tenant(
                conn,
                id=uuid.uuid4(),
                slug=slug,
                name=name,
                plan=plan,
                status="provisioning",
                rate_limit=rate_limit,
                schema=location.schema,
                db_role=location.role,
            )
            for step_name, step in PROVISIONING_STEPS:
                if step_name == "create_tables" and from_migrations:
                    step = _tables_from_migrations
                await step(conn, location)
            record = await repo.update_tenant_any_status(
                conn, slug, status="active", schema_version=head
            )
    except IntegrityError as exc:
        if "uq_tenants" in str(exc.orig) or "pk_tenants" in str(exc.orig):
            raise TenantExists(f"A tenant with slug {slug!r} already exists.") from exc
        if "fk_tenants_plan_plans" in str(exc.orig):
            raise UnknownPlan(plan) from exc
        raise
    except ProgrammingError as exc:
        # Roles are server-wide: another database on this server (or a stale role) may hold
        # the name. Nothing was created here; say so instead of failing with a 500.
        if getattr(exc.orig, "sqlstate", None) == DUPLICATE_OBJECT:
            raise TenantExists(
                f"The database role for tenant {slug!r} already exists on the server; "
                "set DB_TENANT_ROLE_PREFIX when several Tessera databases share a server."
            ) from exc
        raise
    return record


async def _get_or_404(
    conn: AsyncConnection, slug: str, *, for_update: bool = False
) -> TenantRecord:
    record = await repo.get_by_slug(conn, slug, for_update=for_update)
    if record is None or record.status == "provisioning":
        raise TenantNotFound(f"No tenant with slug {slug!r}.")
    return record


async def get_tenant(engine: AsyncEngine, slug: str) -> TenantRecord:
    async with engine.connect() as conn:
        return await _get_or_404(conn, slug)


async def list_tenants(
    engine: AsyncEngine, *, limit: int, status: str | None, cursor: str | None
) -> tuple[list[TenantRecord], str | None]:
    after = None if cursor is None else decode_cursor(cursor)
    async with engine.connect() as conn:
        records = await repo.list_page(conn, limit=limit + 1, status=status, after=after)
    return cut_page(records, limit, created)


async def update_tenant(engine: AsyncEngine, slug: str, **changes: object) -> TenantRecord:
    try:
        async with engine.begin() as conn:
            if not changes:
                return await _get_or_404(conn, slug)
            record = await repo.update_tenant(conn, slug, **changes)
    except IntegrityError as exc:
        if "fk_tenants_plan_plans" in str(exc.orig):
            raise UnknownPlan(str(changes.get("plan"))) from exc
        raise
    if record is None:
        raise TenantNotFound(f"No tenant with slug {slug!r}.")
    return record


async def delete_tenant(engine: AsyncEngine, slug: str) -> TenantRecord:
    """Drop a suspended tenant's schema, data and role, and its registry row, atomically."""
    async with engine.begin() as conn:
        record = await _get_or_404(conn, slug, for_update=True)
        if record.status != "suspended":
            raise TenantActive(f"Tenant {slug!r} is active; suspend it before deleting it.")
        await tenancy.drop_tenant_objects(
            conn, TenantSchema(schema=record.schema, role=record.db_role)
        )
        await repo.delete_tenant(conn, slug)
    return record


async def count_by_status(engine: AsyncEngine, head: str | None) -> list[tuple[str, int, int]]:
    """Per status: how many tenants, and how many of them are not at `head` (for /metrics)."""
    return await repo.count_by_status(engine, head)


def tenant_migrations_head() -> str | None:
    """The head revision of the tenant migrations (read once per process)."""
    return tenant_script().get_current_head()
