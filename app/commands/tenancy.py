"""`tessera migrate` and `tessera tenants ...`: schema migrations and tenant lifecycle."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from app.commands import tenant_archive
from app.core.config import Settings, get_settings
from app.db.engine import build_engine
from app.db.migrate import FleetReport, migrate_shared, migrate_tenants
from app.redis.client import build_redis
from app.services.cache import TenantCache
from app.services.tenant_keys import TenantKeys


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    migrate = sub.add_parser(
        "migrate", help="upgrade the shared schema, then every tenant (idempotent)"
    )
    migrate.add_argument("--concurrency", type=int, default=4, help="tenants migrated at once")
    migrate.add_argument("--tenant", action="append", help="only this tenant (repeatable)")
    migrate.add_argument("--shared-only", action="store_true", help="skip tenant schemas")
    migrate.set_defaults(func=_migrate)

    tenants = sub.add_parser("tenants", help="manage tenants")
    tsub = tenants.add_subparsers(dest="tenants_command", required=True)
    create = tsub.add_parser("create", help="provision a tenant")
    create.add_argument("slug")
    create.add_argument("--name")
    create.add_argument("--plan", default="free", help="a plan's name (free, pro, enterprise, ...)")
    create.add_argument("--rate-limit")
    create.add_argument("--if-missing", action="store_true", help="succeed if it exists")
    create.set_defaults(func=_create_tenant)
    purge = tsub.add_parser(
        "purge",
        help="drop deleted tenants past their grace period (safe on several hosts at once)",
    )
    purge.add_argument(
        "--now",
        metavar="SLUG",
        help="purge this deleted tenant at once, before its grace period ends",
    )
    purge.set_defaults(func=_purge_tenants)
    tenant_archive.register(tsub)  # export, import

    usage = tsub.add_parser("usage", help="tenant usage figures")
    usub = usage.add_subparsers(dest="usage_command", required=True)
    refresh = usub.add_parser(
        "refresh", help="measure rows and storage of every tenant now (the app does it too)"
    )
    refresh.add_argument("--tenant", action="append", help="only this tenant (repeatable)")
    refresh.set_defaults(func=_refresh_usage)


def _migrate(args: argparse.Namespace) -> int:
    return asyncio.run(_migrate_async(args))


async def _migrate_async(args: argparse.Namespace) -> int:
    settings = get_settings()
    # Past the pooler when DATABASE_LISTEN_URL says how: DDL and advisory locks.
    engine = build_engine(settings.direct())
    started = time.monotonic()
    try:
        shared_head = await migrate_shared(engine)
        print(f"shared schema: at {shared_head}")
        if args.shared_only:
            return 0
        report = await migrate_tenants(
            engine,
            concurrency=args.concurrency,
            slugs=args.tenant,
            progress=_progress_bar,
        )
    finally:
        await engine.dispose()
    print_report(report, time.monotonic() - started)
    await drop_cached_reads(
        settings, [TenantKeys(slug, report.ids[slug]) for slug in report.migrated]
    )
    return 0 if report.ok else 1


async def drop_cached_reads(settings: Settings, tenants: list[TenantKeys]) -> None:
    """Bump the cache generation of tenants whose data just changed outside a request (a
    migration): their cached responses may predate it.

    Redis being unreachable never fails the command; the entries then expire within
    CACHE_TTL_SECONDS.
    """
    if not tenants:
        return
    redis = build_redis(settings)
    cache = TenantCache(
        redis,
        ttl_seconds=settings.cache_ttl_seconds,
        timeout_seconds=settings.redis_timeout_seconds,
    )
    try:
        for done, tenant in enumerate(tenants):
            if await cache.bump_generation(tenant) is None:
                # One timeout, not one per tenant: the rest would fail the same way.
                print(
                    f"warning: Redis unreachable; cached reads of {len(tenants) - done} "
                    "tenant(s) expire within CACHE_TTL_SECONDS instead",
                    file=sys.stderr,
                )
                break
    finally:
        await redis.aclose()


def _progress_bar(done: int, total: int, slug: str, ok: bool) -> None:
    if not sys.stderr.isatty() and done not in (total,) and done % 50:
        return
    width = 30
    filled = int(width * done / total) if total else width
    mark = "" if ok else f"  FAILED {slug}"
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}{mark}")
    if done == total or not ok:
        sys.stderr.write("\n")
    sys.stderr.flush()


def print_report(report: FleetReport, seconds: float) -> None:
    rows = [
        ("migrated", len(report.migrated)),
        ("already current", len(report.current)),
        ("failed", len(report.failed)),
    ]
    print(f"tenant schemas: head {report.head} ({seconds:.2f} s)")
    for label, count in rows:
        print(f"  {label:<16} {count:>6}")
    for slug, error in sorted(report.failed.items()):
        print(f"  FAILED {slug}: {error}")
    if report.failed:
        print("rerun `tessera migrate` after fixing them: it continues where it stopped")


def _create_tenant(args: argparse.Namespace) -> int:
    return asyncio.run(_create_tenant_async(args))


async def _create_tenant_async(args: argparse.Namespace) -> int:
    from app.core.config import validate_rate_limit
    from app.core.slugs import slug_problem
    from app.services.admin_audit import cli_actor
    from app.services.provisioning import create_tenant
    from app.services.quotas import UnknownPlan
    from app.services.tenants import TenantExists

    problem = slug_problem(args.slug)
    if problem:
        print(f"error: slug {problem}", file=sys.stderr)
        return 2
    if args.rate_limit:
        try:
            validate_rate_limit(args.rate_limit)
        except ValueError as exc:
            print(f"error: --rate-limit: {exc}", file=sys.stderr)
            return 2
    settings = get_settings()
    engine = build_engine(settings)
    try:
        record: Any = await create_tenant(
            engine,
            settings,
            slug=args.slug,
            name=args.name or args.slug,
            plan=args.plan,
            rate_limit=args.rate_limit,
            actor=cli_actor(),
        )
    except UnknownPlan:
        print(f"error: no plan named {args.plan!r}", file=sys.stderr)
        return 2
    except TenantExists:
        if args.if_missing:
            print(f"tenant {args.slug} exists")
            return 0
        print(f"error: tenant {args.slug} exists", file=sys.stderr)
        return 1
    finally:
        await engine.dispose()
    # No cache work, so no Redis needed: the new tenant's keys carry its own id, which no
    # entry of a deleted tenant of the same slug shares (decision 0022).
    print(f"tenant {record.slug} created: schema {record.schema} at {record.schema_version}")
    return 0


def _purge_tenants(args: argparse.Namespace) -> int:
    return asyncio.run(_purge_tenants_async(args))


async def _purge_tenants_async(args: argparse.Namespace) -> int:
    """Exit 0: done; 1: some tenant failed to purge (left deleted, for the next run); 2: the
    slug given to --now names no deleted tenant."""
    from app.core.errors import TesseraError
    from app.services import tenant_lifecycle
    from app.services.admin_audit import cli_actor

    settings = get_settings()
    # Past the pooler when DATABASE_LISTEN_URL says how: DDL, as `tessera migrate`.
    engine = build_engine(settings.direct())
    actor = cli_actor()
    try:
        if args.now is not None:
            try:
                record = await tenant_lifecycle.purge_tenant_now(engine, args.now, actor=actor)
            except TesseraError as exc:
                print(f"error: {exc.detail}", file=sys.stderr)
                return 2
            report = tenant_lifecycle.PurgeReport(purged=[record])
        else:
            report = await tenant_lifecycle.purge_due(engine, actor=actor)
    finally:
        await engine.dispose()
    # After the commit, best effort: what the tenants had cached can no longer be reached.
    await drop_cached_reads(
        settings, [TenantKeys(record.slug, record.id) for record in report.purged]
    )
    for record in report.purged:
        print(f"tenant {record.slug} purged: schema {record.schema} and role dropped")
    for slug, error in sorted(report.failed.items()):
        print(f"FAILED {slug}: {error}", file=sys.stderr)
    print(f"purged {len(report.purged)}, failed {len(report.failed)}")
    return 1 if report.failed else 0


def _refresh_usage(args: argparse.Namespace) -> int:
    return asyncio.run(_refresh_usage_async(args))


async def _refresh_usage_async(args: argparse.Namespace) -> int:
    from app.services.usage import refresh

    engine = build_engine(get_settings())
    started = time.monotonic()
    try:
        measured = await refresh(engine, args.tenant)
    finally:
        await engine.dispose()
    print(f"usage: {measured} tenants measured ({time.monotonic() - started:.2f} s)")
    return 0
