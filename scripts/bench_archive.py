"""The "Export and import" section of scripts/bench.py: tenant archives against bare COPY.

A tenant of N tasks (with labels) over 1,000 projects is seeded with INSERT ... SELECT
generate_series. Each operation runs in a worker process of its own (this script, `worker`),
which times the operation alone (not its start-up) and whose peak RSS the parent reads from
wait4(2): the export (`services.archive.export_tenant`, written to a file), the import of that
file under a new slug, and PostgreSQL's own COPY ... TO / FROM of the same tables (the FROM
into a freshly provisioned tenant's tables, indexes and foreign keys included, in one
transaction), alternating, best of `rounds`. Rows per second count every row of the tenant.

    uv run python scripts/bench.py --full --only archive     # just this section, into the page
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.core.config import Settings  # noqa: E402
from app.db.engine import build_engine  # noqa: E402
from app.services.provisioning import create_tenant  # noqa: E402

PROJECTS = 1000
TABLES = ("projects", "tasks", "audit_events", "idempotency_keys")  # parents first
BEGIN, END = "<!-- archive:begin -->", "<!-- archive:end -->"


@dataclass(frozen=True)
class Run:
    seconds: float
    rows: int
    peak_rss_mib: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds


def settings_for(db_url: str, role_prefix: str) -> Settings:
    return Settings(
        environment="development",
        database_url=db_url,
        db_tenant_role_prefix=role_prefix,
        db_pool_size=2,
        log_level="WARNING",
    )


async def seed(db_url: str, role_prefix: str, slug: str, tasks: int) -> str:
    """A tenant holding `tasks` tasks with labels over PROJECTS projects; its schema."""
    settings = settings_for(db_url, role_prefix)
    engine = build_engine(settings)
    try:
        record = await create_tenant(
            engine, settings, slug=slug, name="archive bench", plan="pro", rate_limit=None
        )
    finally:
        await engine.dispose()
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(f'SET search_path TO "{record.schema}"')
        await conn.execute(
            "INSERT INTO projects (id, name, description) SELECT gen_random_uuid(), "
            "'project ' || n, 'a project of the archive benchmark' "
            f"FROM generate_series(1, {PROJECTS}) AS n"
        )
        await conn.execute(
            "INSERT INTO tasks (id, project_id, title, description, status, priority, assignee, "
            "labels, due_date, created_by) "
            "SELECT gen_random_uuid(), p.ids[1 + n % array_length(p.ids, 1)], 'task ' || n, "
            "'what task ' || n || ' is about', (ARRAY['todo', 'in_progress', 'done'])[1 + n % 3], "
            "(ARRAY['low', 'medium', 'high'])[1 + n % 3], "
            "(ARRAY['alice', 'bob', NULL])[1 + n % 3], "
            "ARRAY['label-' || n % 7, 'team-' || n % 5], DATE '2030-01-01' + n % 365, 'bench' "
            f"FROM (SELECT array_agg(id) AS ids FROM projects) AS p, generate_series(1, {tasks}) n"
        )
        await conn.execute(f'ANALYZE "{record.schema}".tasks')
    finally:
        await conn.close()
    return record.schema


def run_worker(args: Sequence[str]) -> Run:
    """One operation in a process of its own: its own timing, and its peak RSS (wait4)."""
    proc = subprocess.Popen(  # noqa: S603 - this very script
        [sys.executable, __file__, "worker", *args], stdout=subprocess.PIPE, cwd=ROOT
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"archive bench worker {args} failed ({proc.returncode})")
    answer = json.loads(out)
    return Run(answer["seconds"], answer["rows"], usage.ru_maxrss / 1024)


async def archive_section(
    add: Any,
    target: Any,
    db_url: str,
    role_prefix: str,
    tmp: Path,
    sizes: Sequence[int],
    rounds: int,
) -> None:
    """Seed each size, run the four operations `rounds` times alternating, report."""
    results: dict[int, dict[str, Run]] = {}
    for tasks in sizes:
        slug = f"arch-{tasks}"
        schema = await seed(db_url, role_prefix, slug, tasks)
        common = ["--database-url", db_url, "--role-prefix", role_prefix]
        best: dict[str, Run] = {}
        for n in range(rounds):
            file, copies = tmp / f"{slug}-{n}.tar", tmp / f"{slug}-{n}-copy"
            steps = {
                "copy_out": ["copy-out", "--schema", schema, "--path", str(copies)],
                "export": ["export", "--slug", slug, "--path", str(file)],
                "copy_in": ["copy-in", "--slug", f"{slug}-c{n}", "--path", str(copies)],
                "import": ["import", "--slug", f"{slug}-i{n}", "--path", str(file)],
            }
            for name, argv in steps.items():
                run = run_worker([*argv, *common])
                if name not in best or run.seconds < best[name].seconds:
                    best[name] = run
        results[tasks] = best
    largest = max(sizes)
    add(
        "",
        BEGIN,
        "## Export and import",
        "",
        f"A tenant of N tasks (two labels each) over {PROJECTS:,} projects, seeded with "
        "INSERT ... SELECT generate_series. Export: `services/archive.export_tenant` (one "
        "REPEATABLE READ snapshot, spooled, SHA-256 per table) written to a file; import: that "
        "file under a new slug (provisioning, COPY FROM in the one transaction, checksums and "
        "counts checked; provisioning the tenant, tens of milliseconds, weighs on small "
        "tenants). Beside them, PostgreSQL's own `COPY ... TO STDOUT` of the same tables "
        "to files, and `COPY ... FROM STDIN` of those files into a freshly provisioned "
        "tenant's tables (indexes and foreign keys included) in one transaction. Each "
        f"operation in a process of its own, best of {rounds}; peak RSS is that process's "
        "(Python and the app's imports included).",
        "",
        "| tasks | rows | operation | seconds | rows/s | x COPY | peak RSS MiB |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    )
    for tasks, best in results.items():
        for name, base in (("export", "copy_out"), ("import", "copy_in")):
            for label, run in (
                (f"bare COPY {'TO' if name == 'export' else 'FROM'}", best[base]),
                (name, best[name]),
            ):
                ratio = run.rows_per_second / best[base].rows_per_second
                add(
                    f"| {tasks:,} | {run.rows:,} | {label} | {run.seconds:.3f} | "
                    f"{run.rows_per_second:,.0f} | {ratio:.2f} | {run.peak_rss_mib:.0f} |"
                )
    smallest = min(sizes)
    verdicts: list[tuple[str, str, bool | None]] = []
    for name, base in (("export", "copy_out"), ("import", "copy_in")):
        best = results[largest]
        ratio = best[name].rows_per_second / best[base].rows_per_second
        verdicts.append(
            (f"{name} rate >= 0.5 x COPY ({largest:,} tasks)", f"{ratio:.2f} x", ratio >= 0.5)
        )
        small, large = results[smallest][name].peak_rss_mib, results[largest][name].peak_rss_mib
        verdicts.append(
            (
                f"{name} memory flat ({smallest:,} → {largest:,} tasks: peak RSS grows < 10 MiB)",
                f"{small:.0f} → {large:.0f} MiB" if smallest < largest else "one size only",
                large - small < 10 if smallest < largest else None,
            )
        )
    add("", "| target | measured | verdict |", "| --- | --- | --- |")
    for name, measured, met in verdicts:
        target(name, measured, met)
        verdict = "not measured" if met is None else ("met" if met else "**missed**")
        add(f"| {name} | {measured} | {verdict} |")
    add(END)


def splice(previous: str, section: Sequence[str]) -> str:
    """The page with its archive section replaced by `section` (or added before the Citus
    section, or at the end)."""
    block = "\n".join(section).strip("\n")
    if BEGIN in previous and END in previous:
        head, rest = previous.split(BEGIN, 1)
        return head.rstrip("\n") + "\n\n" + block + rest.split(END, 1)[1]
    if "<!-- citus:begin -->" in previous:
        head, rest = previous.split("<!-- citus:begin -->", 1)
        return head.rstrip("\n") + "\n\n" + block + "\n\n<!-- citus:begin -->" + rest
    return previous.rstrip("\n") + "\n\n" + block + "\n"


# --- the worker -------------------------------------------------------------------------------


async def worker(args: argparse.Namespace) -> dict[str, float]:
    from app.services.archive import export_tenant, import_tenant
    from app.services.archive_format import CHUNK_BYTES

    settings = settings_for(args.database_url, args.role_prefix)
    engine = build_engine(settings)
    try:
        if args.op == "export":
            started = time.perf_counter()
            export = await export_tenant(engine, args.slug)
            with open(args.path, "wb") as out:
                async for chunk in export.stream():
                    out.write(chunk)
            rows = sum(t.rows for t in export.manifest.tables)
            return {"seconds": time.perf_counter() - started, "rows": rows}
        if args.op == "import":

            async def chunks() -> Any:
                with open(args.path, "rb") as source:
                    while chunk := source.read(CHUNK_BYTES):
                        yield chunk

            started = time.perf_counter()
            record = await import_tenant(engine, settings, chunks(), slug=args.slug)
            seconds = time.perf_counter() - started
            return {"seconds": seconds, "rows": await count_rows(args.database_url, record.schema)}
        if args.op == "copy-out":
            Path(args.path).mkdir(exist_ok=True)
            conn = await asyncpg.connect(args.database_url)
            try:
                started = time.perf_counter()
                rows = 0
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    for table in TABLES:
                        status = await conn.copy_from_table(
                            table, schema_name=args.schema, output=f"{args.path}/{table}.copy"
                        )
                        rows += int(status.split()[-1])
                return {"seconds": time.perf_counter() - started, "rows": rows}
            finally:
                await conn.close()
        # copy-in: into an empty tenant provisioned first (not timed)
        record = await create_tenant(
            engine, settings, slug=args.slug, name="copy", plan="pro", rate_limit=None
        )
        conn = await asyncpg.connect(args.database_url)
        try:
            started = time.perf_counter()
            rows = 0
            async with conn.transaction():
                for table in TABLES:
                    status = await conn.copy_to_table(
                        table, schema_name=record.schema, source=f"{args.path}/{table}.copy"
                    )
                    rows += int(status.split()[-1])
            return {"seconds": time.perf_counter() - started, "rows": rows}
        finally:
            await conn.close()
    finally:
        await engine.dispose()


async def count_rows(db_url: str, schema: str) -> int:
    conn = await asyncpg.connect(db_url)
    try:
        total = 0
        for table in TABLES:
            total += int(await conn.fetchval(f'SELECT count(*) FROM "{schema}".{table}'))
        return total
    finally:
        await conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="archive benchmark worker (see bench.py)")
    parser.add_argument("worker", choices=["worker"])
    parser.add_argument("op", choices=["export", "import", "copy-out", "copy-in"])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--role-prefix", required=True)
    parser.add_argument("--slug")
    parser.add_argument("--schema")
    parser.add_argument("--path", required=True)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(worker(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
