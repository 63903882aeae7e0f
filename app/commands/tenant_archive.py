"""`tessera tenants export` and `tessera tenants import`: a tenant as one portable archive."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

from app.core.config import get_settings
from app.core.errors import TesseraError
from app.core.slugs import slug_problem
from app.db.engine import build_engine
from app.services.admin_audit import cli_actor
from app.services.archive_format import CHUNK_BYTES

# Exit statuses: 1 the tenant is absent or its slug taken (as `tenants create`), 2 the
# archive or an argument is refused.
NOT_POSSIBLE, REFUSED = 1, 2


def register(tsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    export = tsub.add_parser("export", help="write a tenant to one archive file")
    export.add_argument("slug")
    export.add_argument("--output", "-o", required=True, help="archive file ('-': stdout)")
    export.add_argument("--gzip", action="store_true", help="gzip the archive")
    export.set_defaults(func=_export)

    imp = tsub.add_parser("import", help="provision a tenant from an archive file")
    imp.add_argument("file", help="archive file ('-': stdin)")
    imp.add_argument("--slug", help="the new tenant's slug (default: the archive's)")
    imp.set_defaults(func=_import)


def _export(args: argparse.Namespace) -> int:
    return asyncio.run(_export_async(args))


async def _export_async(args: argparse.Namespace) -> int:
    from app.services.archive import export_tenant

    if problem := slug_problem(args.slug):
        return _refused(f"slug {problem}")
    engine = build_engine(get_settings().direct())
    try:
        export = await export_tenant(engine, args.slug, actor=cli_actor())
    except TesseraError as exc:
        return _fail(exc)
    finally:
        await engine.dispose()
    target = Path(args.output)
    partial = target.with_name(target.name + ".partial")
    out: BinaryIO = sys.stdout.buffer if args.output == "-" else partial.open("wb")
    try:
        async for chunk in export.stream(gzip=args.gzip):
            out.write(chunk)
    except BaseException:
        if out is not sys.stdout.buffer:
            out.close()
            partial.unlink(missing_ok=True)  # never a truncated archive under the name
        raise
    if out is not sys.stdout.buffer:
        out.close()
        partial.replace(target)
    rows = sum(table.rows for table in export.manifest.tables)
    print(
        f"tenant {args.slug} exported: {rows} rows in {len(export.manifest.tables)} tables, "
        f"schema version {export.manifest.schema_version}",
        file=sys.stderr,
    )
    return 0


def _import(args: argparse.Namespace) -> int:
    return asyncio.run(_import_async(args))


async def _import_async(args: argparse.Namespace) -> int:
    from app.services.archive import import_tenant

    if args.slug is not None and (problem := slug_problem(args.slug)):
        return _refused(f"--slug {problem}")
    try:
        source: BinaryIO = sys.stdin.buffer if args.file == "-" else Path(args.file).open("rb")
    except OSError as exc:
        return _refused(f"{args.file}: {exc.strerror}")
    settings = get_settings()
    engine = build_engine(settings.direct())
    try:
        record = await import_tenant(
            engine, settings, _chunks(source), slug=args.slug, actor=cli_actor()
        )
    except TesseraError as exc:
        return _fail(exc)
    finally:
        source.close()
        await engine.dispose()
    print(f"tenant {record.slug} imported: schema {record.schema} at {record.schema_version}")
    return 0


async def _chunks(source: BinaryIO) -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(source.read, CHUNK_BYTES):
        yield chunk


def _fail(exc: TesseraError) -> int:
    print(f"error: {exc.detail}", file=sys.stderr)
    return REFUSED if exc.status == 422 else NOT_POSSIBLE


def _refused(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return REFUSED
