"""CPU cost of one request, part by part, against issue 8's budget, and of a write
(issue 17): where a `POST /v1/projects` spends its CPU (writes docs/profile.md).

    uv run python scripts/profile_request.py [--output docs/profile.md]

In-process and sequential (no HTTP server, no load generator), so the numbers are CPU
microseconds spent in this process per request, not latency: they say where the time of
the load test in docs/benchmarks.md goes. It creates its own database (dropped at the
end), uses Redis DB 11 (flushed) and serves the dev issuer's JWKS on a loopback port.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import uvicorn
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from asgi_lifespan import LifespanManager  # noqa: E402
from fastapi import FastAPI  # noqa: E402

from app.api.instrumentation import RouteTemplateMiddleware  # noqa: E402
from app.core.config import Settings  # noqa: E402
from app.db.engine import build_engine  # noqa: E402
from app.db.fair_share import TenantShare, TenantSlots  # noqa: E402
from app.db.migrate import migrate_shared  # noqa: E402
from app.db.pool import TenantConnections  # noqa: E402
from app.db.tenancy import TenantSchema, begin_pinned_sql  # noqa: E402
from app.devissuer import DevIssuer  # noqa: E402
from app.main import create_app  # noqa: E402
from app.services.provisioning import create_tenant  # noqa: E402

SERVER_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("PROFILE_REDIS_URL", "redis://127.0.0.1:6379/11")
N = 2000
WRITE_N = 400  # each call of the write rows inserts a project: fewer, for the run's length
ROUNDS = 10  # of each paired difference
PROFILE_OUT: Any = None  # --cprofile: where function profiles go

# Tessera's side of each write the benchmark runs, registered by write_rows and
# task_write_rows, for the part-by-part table (write_parts).
WRITES: dict[str, Callable[[], Awaitable[int]]] = {}
WRITE_PARTS: list[str] = []  # that table's lines (docs/profile.md's second section)

FAIR_SHARE_ROW = "fair share admission (tenant slot + statement timeout in the pin, vs neither)"
FAIR_SHARE_CODE_ROW = "fair share admission, its code alone (slot, pin SQL; no round trips)"

# Issue 8's per-request CPU budget.
BUDGET = {
    "JWT verification, token seen before": 75,
    "rate limit (one Redis round trip)": 150,
    "metrics (HTTP instrumentation)": 75,
    "tenant pin (BEGIN + pin in one round trip, vs BEGIN alone)": 150,
    # Issue 19's budget for fair share (docs/decisions/0026).
    FAIR_SHARE_ROW: 20,
}


async def call(
    app: Any,
    path: str,
    token: str,
    method: str = "GET",
    body: bytes = b"",
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> int:
    headers = [
        (b"host", b"bench"),
        (b"authorization", b"Bearer " + token.encode()),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return int(sent[0]["status"])


async def cpu_per_call(fn: Callable[[], Awaitable[Any]], n: int | None = None) -> float:
    n = N if n is None else n
    for _ in range(max(min(100, n), n // 10)):
        await fn()
    started = time.process_time()
    for _ in range(n):
        await fn()
    return (time.process_time() - started) / n * 1e6


async def paired(
    a: Callable[[], Awaitable[Any]],
    b: Callable[[], Awaitable[Any]],
    rounds: int | None = None,
    n: int | None = None,
) -> float:
    """CPU per call of `a` minus that of `b`: the median over rounds in which each is
    measured right after the other, so that a machine whose speed drifts (this VM's does)
    weighs on both sides of each difference alike."""
    differences = []
    n = N // 4 if n is None else n
    for _ in range(ROUNDS if rounds is None else rounds):
        differences.append(await cpu_per_call(a, n) - await cpu_per_call(b, n))
    return statistics.median(differences)


async def function_profile(what: str, fn: Callable[[], Awaitable[Any]]) -> None:
    """--cprofile: where one kind of request's time goes, function by function (to stderr)."""
    import cProfile
    import pstats

    profiler = cProfile.Profile(time.process_time)  # CPU, not the waits on sockets
    print(f"\n### {what}: {N} requests", file=PROFILE_OUT)
    profiler.enable()
    for _ in range(N):
        await fn()
    profiler.disable()
    stats = pstats.Stats(profiler, stream=PROFILE_OUT)
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(60)


def serve_issuer(keys: Path) -> tuple[DevIssuer, str, uvicorn.Server]:
    """The dev issuer over real HTTP on a free loopback port (its URL is its `iss`)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    dev = DevIssuer(Settings(auth_issuer=url), key_dir=keys, issuer=url)
    server = uvicorn.Server(uvicorn.Config(dev.asgi_app(), log_level="warning"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    return dev, url, server


async def measure(
    settings: Settings, dev: DevIssuer, *, only_writes: bool = False
) -> list[tuple[str, float]]:
    engine = build_engine(settings)
    await migrate_shared(engine)
    tenant = await create_tenant(
        engine, settings, slug="profiled", name="P", plan="pro", rate_limit=None
    )
    await engine.dispose()
    token = dev.mint("profiler", tenant=tenant.slug, scopes="api:read api:write")
    rows: list[tuple[str, float]] = []

    async def with_app(
        app_settings: Settings, strip_metrics: bool = False
    ) -> tuple[FastAPI, LifespanManager]:
        app = create_app(app_settings)
        if strip_metrics:
            app.user_middleware = [
                m for m in app.user_middleware if m.cls is not RouteTemplateMiddleware
            ]
        manager = LifespanManager(app)
        await manager.__aenter__()
        return app, manager

    app, manager = await with_app(settings)
    status = 0

    async def create() -> None:
        nonlocal status
        status = await call(app, "/v1/projects", token, "POST", json.dumps({"name": "p"}).encode())

    await create()
    assert status == 201
    from sqlalchemy import select

    from app.db.models.tenant import projects as projects_table

    location = TenantSchema(schema=tenant.schema, role=tenant.db_role)
    async with app.state.connections.transaction(location) as session:
        project_id = await session.scalar(select(projects_table.c.id).limit(1))
    read = f"/v1/projects/{project_id}"

    # The benchmark's floor, measured the same way: scripts/bench_baseline.py on this tenant's
    # schema (it reads its settings from the environment when imported).
    os.environ["BENCH_DATABASE_URL"] = settings.dsn
    os.environ["BENCH_SCHEMA"] = tenant.schema
    from scripts.bench_baseline import app as baseline_app

    bare = LifespanManager(baseline_app)
    await bare.__aenter__()
    if only_writes:
        rows.extend(await write_rows(app, baseline_app, token, read))
        rows.extend(await task_write_rows(app, baseline_app, token, settings.dsn, tenant.schema))
        await write_parts()
        await bare.__aexit__(None, None, None)
        await manager.__aexit__(None, None, None)
        return rows
    rows.append(
        (
            "baseline app (scripts/bench_baseline.py): GET /v1/projects/{id}",
            await cpu_per_call(lambda: call(baseline_app, read, "")),
        )
    )
    rows.append(
        (
            "GET /healthz (framework and request middleware floor)",
            await cpu_per_call(lambda: call(app, "/healthz", token)),
        )
    )
    rows.append(
        (
            "GET /v1/tenant (auth, tenant, rate limit, metrics, log; no database)",
            await cpu_per_call(lambda: call(app, "/v1/tenant", token)),
        )
    )
    rows.append(
        (
            f"GET {read.replace(str(project_id), '{id}')}, cache hit",
            await cpu_per_call(lambda: call(app, read, token)),
        )
    )
    limiter = app.state.rate_limiter
    original = limiter.check

    async def no_limit(*_: Any, **__: Any) -> None:
        return None

    async def limited() -> int:
        limiter.check = original
        return await call(app, "/v1/tenant", token)

    async def unlimited() -> int:
        limiter.check = no_limit
        return await call(app, "/v1/tenant", token)

    limit_cost = await paired(limited, unlimited)
    del limiter.check  # the class's own again (write_parts times it there)
    rows.append(("rate limit (one Redis round trip)", limit_cost))

    verifier = app.state.token_verifier
    rows.append(
        (
            "JWT verification, token seen before",
            await cpu_per_call(lambda: verifier.verify(token), n=10 * N),
        )
    )
    if PROFILE_OUT is not None:
        await function_profile("cache hit", lambda: call(app, read, token))

    fresh = [dev.mint(f"u{i}", tenant=tenant.slug, scopes="api:read") for i in range(N + 200)]
    tokens = iter(fresh)
    rows.append(
        (
            "JWT verification, new RS256 token (not in the budget: once per token)",
            await cpu_per_call(lambda: verifier.verify(next(tokens))),
        )
    )

    cold_app, cold = await with_app(settings.model_copy(update={"cache_ttl_seconds": 0}))
    rows.append(
        (
            f"GET {read.replace(str(project_id), '{id}')}, cache off (every read a miss)",
            await cpu_per_call(lambda: call(cold_app, read, token)),
        )
    )
    if PROFILE_OUT is not None:
        await function_profile("cache off", lambda: call(cold_app, read, token))
    await cold.__aexit__(None, None, None)

    bare_app, stripped = await with_app(settings, strip_metrics=True)
    metrics_cost = await paired(lambda: call(app, read, token), lambda: call(bare_app, read, token))
    rows.append(("metrics (HTTP instrumentation)", metrics_cost))
    await stripped.__aexit__(None, None, None)

    rows.extend(await write_rows(app, baseline_app, token, read))
    rows.append((FAIR_SHARE_ROW, await fair_share_admission_cost(app.state.connections, location)))
    rows.append((FAIR_SHARE_CODE_ROW, await fair_share_code_cost(location)))
    rows.extend(await task_write_rows(app, baseline_app, token, settings.dsn, tenant.schema))
    await write_parts()
    await bare.__aexit__(None, None, None)
    await manager.__aexit__(None, None, None)

    conn = await asyncpg.connect(settings.dsn)
    pin = (
        f"BEGIN; SELECT set_config('search_path', '\"{tenant.schema}\"', true), "
        f"set_config('role', '{tenant.db_role}', true)"
    )

    async def pinned() -> None:
        await conn.execute(pin)
        await conn.execute("COMMIT")

    async def unpinned() -> None:
        await conn.execute("BEGIN")
        await conn.execute("COMMIT")

    rows.append(
        (
            "tenant pin (BEGIN + pin in one round trip, vs BEGIN alone)",
            await paired(pinned, unpinned),
        )
    )
    await conn.close()
    return rows


async def write_rows(app: Any, baseline_app: Any, token: str, read: str) -> list[tuple[str, float]]:
    """Issue 17's write column: where a `POST /v1/projects` spends its CPU, against the bare
    insert (scripts/bench_baseline.py in-process) and a cached read; every call creates a
    project, with a small JSON body as the benchmark sends."""
    body = json.dumps({"name": "bench", "description": "written by the profiler"}).encode()
    keys = (f"profile-{uuid.uuid4().hex}-{n}".encode() for n in range(10**9))

    async def create() -> int:
        return await call(app, "/v1/projects", token, "POST", body)

    async def create_keyed() -> int:
        return await call(
            app, "/v1/projects", token, "POST", body, ((b"idempotency-key", next(keys)),)
        )

    async def bare_insert() -> int:
        return await call(baseline_app, "/v1/projects", "", "POST", body)

    WRITES["POST /v1/projects"] = create
    for fn in (create, create_keyed, bare_insert):
        status = await fn()
        if status != 201:
            raise RuntimeError(f"{fn.__name__}: {status}, not 201")
    rows = [
        (
            "baseline app (scripts/bench_baseline.py): POST /v1/projects (bare INSERT ... "
            "RETURNING)",
            await cpu_per_call(bare_insert, WRITE_N),
        ),
        ("POST /v1/projects (Tessera's whole write path)", await cpu_per_call(create)),
        (
            "POST /v1/projects with an Idempotency-Key (a fresh one each)",
            await cpu_per_call(create_keyed, WRITE_N),
        ),
        (
            "write over the bare insert (POST /v1/projects: Tessera's vs the baseline app's)",
            await paired(create, bare_insert, n=WRITE_N // 4),
        ),
        (
            "write over a cached read (POST /v1/projects vs GET /v1/projects/{id}, cache hit: "
            "the body, the pinned transaction, the insert and its audit event, invalidation)",
            await paired(create, lambda: call(app, read, token), n=WRITE_N // 4),
        ),
        (
            "Idempotency-Key (create with a fresh key, vs without)",
            await paired(create_keyed, create, n=WRITE_N // 4),
        ),
    ]
    if PROFILE_OUT is not None:
        await function_profile("POST /v1/projects", create)
    return rows


async def fair_share_admission_cost(
    connections: TenantConnections, location: TenantSchema
) -> float:
    """CPU µs per transaction of fair share's admission: the same empty tenant transaction
    with a share (a slot taken and given back, the statement timeout in the pin's round trip)
    and without one (also what scripts/bench.py's noisy-neighbour section reports)."""
    share = TenantShare("profiled", 10, 3000)

    async def admitted() -> None:
        async with connections.transaction(location, share=share):
            pass

    async def bare() -> None:
        async with connections.transaction(location):
            pass

    # A difference of a few µs between two transactions of some 200 µs each: more rounds
    # than the other rows, so the machine's drift averages out of the median.
    return await paired(admitted, bare, rounds=20, n=1000)


async def fair_share_code_cost(location: TenantSchema, n: int = 100_000) -> float:
    """CPU µs of fair share's own code per transaction, without the round trips around it:
    a slot taken and given back, and the pin's SQL with the statement timeout less the pin's
    SQL without (what the transaction measure above is a noisy upper bound of)."""
    slots, share = TenantSlots(wait_seconds=1.0), TenantShare("profiled", 10, 3000)
    started = time.process_time()
    for _ in range(n):
        await slots.take(share)
        slots.give_back(share)
        begin_pinned_sql(location, statement_timeout_ms=3000)
    admitted = time.process_time() - started
    started = time.process_time()
    for _ in range(n):
        begin_pinned_sql(location)
    return (admitted - (time.process_time() - started)) / n * 1e6


async def task_write_rows(
    app: Any, baseline_app: Any, token: str, dsn: str, schema: str
) -> list[tuple[str, float]]:
    """The other writes of the benchmark, Tessera's beside the bare app's: create a task,
    a conditional PATCH of a task (If-Match naming its current version), a DELETE of a task
    (each call deletes one of the tasks seeded for it)."""
    conn = await asyncpg.connect(dsn)
    try:
        project = await conn.fetchval(
            f'INSERT INTO "{schema}".projects (id, name) VALUES (gen_random_uuid(), '
            "'profiled tasks') RETURNING id"
        )

        async def seed(n: int) -> list[str]:
            rows = await conn.fetch(
                f'INSERT INTO "{schema}".tasks (id, project_id, title, created_by) '
                "SELECT gen_random_uuid(), $1, 'seeded', 'profiler' "
                "FROM generate_series(1, $2) RETURNING id",
                project,
                n,
            )
            return [str(row["id"]) for row in rows]

        # Each DELETE deletes one: its row above, then write_parts' measure and profile.
        deletes = 3 * (WRITE_N + max(100, WRITE_N // 10))
        patched = {"tessera": (await seed(1))[0], "bare": (await seed(1))[0]}
        doomed = {"tessera": iter(await seed(deletes)), "bare": iter(await seed(deletes))}
    finally:
        await conn.close()
    versions = {"tessera": 1, "bare": 1}
    task_body = json.dumps({"title": "bench"}).encode()

    def patch(target: Any, which: str, auth: str) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            task = patched[which]
            match = f'"{task}-{versions[which]}"'.encode()
            status = await call(
                target,
                f"/v1/tasks/{task}",
                auth,
                "PATCH",
                json.dumps({"title": f"patched {versions[which]}"}).encode(),
                ((b"if-match", match),),
            )
            if status != 200:
                raise RuntimeError(f"PATCH ({which}): {status}, not 200")
            versions[which] += 1
            return status

        return run

    def remove(target: Any, which: str, auth: str) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            status = await call(target, f"/v1/tasks/{next(doomed[which])}", auth, "DELETE")
            if status != 204:
                raise RuntimeError(f"DELETE ({which}): {status}, not 204")
            return status

        return run

    tasks = f"/v1/projects/{project}/tasks"
    WRITES["POST /v1/projects/{id}/tasks"] = lambda: call(app, tasks, token, "POST", task_body)
    WRITES["PATCH /v1/tasks/{id}"] = patch(app, "tessera", token)
    WRITES["DELETE /v1/tasks/{id}"] = remove(app, "tessera", token)
    rows = [
        (
            "baseline app: POST /v1/projects/{id}/tasks",
            await cpu_per_call(lambda: call(baseline_app, tasks, "", "POST", task_body), WRITE_N),
        ),
        (
            "POST /v1/projects/{id}/tasks (Tessera)",
            await cpu_per_call(lambda: call(app, tasks, token, "POST", task_body), WRITE_N),
        ),
        (
            "baseline app: PATCH /v1/tasks/{id} (If-Match)",
            await cpu_per_call(patch(baseline_app, "bare", ""), WRITE_N),
        ),
        (
            "PATCH /v1/tasks/{id} (If-Match) (Tessera)",
            await cpu_per_call(patch(app, "tessera", token), WRITE_N),
        ),
        (
            "baseline app: DELETE /v1/tasks/{id}",
            await cpu_per_call(remove(baseline_app, "bare", ""), WRITE_N),
        ),
        (
            "DELETE /v1/tasks/{id} (Tessera)",
            await cpu_per_call(remove(app, "tessera", token), WRITE_N),
        ),
    ]
    if PROFILE_OUT is not None:
        await function_profile("PATCH /v1/tasks/{id} (If-Match)", patch(app, "tessera", token))
    return rows


# The parts of a write, each the CPU spent inside some of the path's own functions (less
# what nested parts take), timed by wrappers put on those functions while the write runs:
# (label, the functions it times, the labels of the parts inside them).
_PARTS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("HTTP metrics (the instrumentator's middleware)", ("metrics",), ("middleware",)),
    (
        "request middleware: request id, body limit, access log, tenant metric, usage tally",
        ("middleware",),
        ("early paths",),
    ),
    ("of which the access log line", ("access log",), ()),
    (
        "admission: token, tenant, status, scope (`admit`)",
        ("admit",),
        ("rate limit",),
    ),
    ("rate limit (one Redis round trip)", ("rate limit",), ()),
    ("body and parameters, validated by the route's own models", ("validation",), ()),
    ("fair share slot (taken and given back)", ("slot", "slot back"), ()),
    ("connection and BEGIN + pin (one round trip)", ("begin",), ()),
    ("the write's statement with its audit event (one round trip)", ("statement",), ()),
    ("COMMIT (one round trip), connection parked", ("commit",), ("slot back",)),
    ("cache invalidation after the commit (one Redis round trip)", ("invalidation",), ()),
    ("answer: record to model, JSON body, headers", ("answer",), ()),
)


@contextlib.contextmanager
def _timing(spent: dict[str, int]) -> Any:
    """Wrap the write path's functions so that each adds the CPU spent inside it (its
    callees included) to `spent[name]`, in nanoseconds; the originals come back after."""
    from app.api import declared_routes, writes_first
    from app.api import middleware as request_middleware
    from app.api.cached_reads import CachedReadsFirst
    from app.api.dependencies.db import CacheInvalidation
    from app.db.executor import TenantSession
    from app.services.rate_limiter import TenantRateLimiter

    clock = time.process_time_ns

    def sync(fn: Any, name: str) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += clock() - started

        return timed

    def coroutine(fn: Any, name: str) -> Any:
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = clock()
            try:
                return await fn(*args, **kwargs)
            finally:
                spent[name] += clock() - started

        return timed

    def context(fn: Any) -> Any:
        """The pool's transaction: its entry (slot, BEGIN + pin) is timed by the wrappers
        inside it; its exit is the COMMIT (and the slot given back)."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            manager = fn(*args, **kwargs)

            class Timed:
                async def __aenter__(self) -> Any:
                    return await manager.__aenter__()

                async def __aexit__(self, *exc: Any) -> Any:
                    started = clock()
                    try:
                        return await manager.__aexit__(*exc)
                    finally:
                        spent["commit"] += clock() - started

            return Timed()

        return timed

    patches: list[tuple[Any, str, Any]] = [
        (RouteTemplateMiddleware, "__call__", coroutine, "metrics"),
        (request_middleware.RequestContextMiddleware, "__call__", coroutine, "middleware"),
        (CachedReadsFirst, "__call__", coroutine, "early paths"),
        (request_middleware.access_logger, "info", sync, "access log"),
        (writes_first, "admit", coroutine, "admit"),
        (TenantRateLimiter, "check", coroutine, "rate limit"),
        (writes_first._WriteRoute, "call", sync, "validation"),
        (TenantSlots, "take", coroutine, "slot"),
        (TenantSlots, "give_back", sync, "slot back"),
        (TenantConnections, "_begin", coroutine, "begin"),
        (TenantConnections, "transaction", None, "commit"),
        (TenantSession, "execute", coroutine, "statement"),
        (CacheInvalidation, "apply", coroutine, "invalidation"),
        (declared_routes, "created", sync, "answer"),
        (declared_routes, "changed", sync, "answer"),
    ]  # type: ignore[list-item]
    originals = []
    for owner, attribute, wrap, name in patches:  # type: ignore[misc]
        # Its own (restored after) or inherited from a class (the wrapper then removed).
        own = owner.__dict__.get(attribute)
        originals.append((owner, attribute, own))
        spent.setdefault(name, 0)
        original = getattr(owner, attribute) if own is None or not isinstance(owner, type) else own
        setattr(owner, attribute, context(original) if wrap is None else wrap(original, name))
    try:
        yield
    finally:
        for owner, attribute, own in originals:
            if own is None:
                delattr(owner, attribute)
            else:
                setattr(owner, attribute, own)


async def write_parts() -> None:
    """Where each write's CPU goes, part by part (issue 17): the CPU spent inside each part's
    functions while the write runs (timed by wrappers, not a profiler, which would add its
    own cost to every Python call and inflate the parts made of many), against the write's
    CPU measured without the wrappers; what no part names (uvicorn-less ASGI plumbing,
    Starlette's and FastAPI's layers, the harness) is the rest."""
    columns = list(WRITES)
    shares: dict[str, list[float]] = {label: [] for label, _, _ in _PARTS}
    totals: list[float] = []
    for name in columns:
        fn = WRITES[name]
        totals.append(await cpu_per_call(fn, WRITE_N))
        spent: dict[str, int] = {}
        with _timing(spent):
            for _ in range(WRITE_N):
                await fn()
        for label, timed, inner in _PARTS:
            own = sum(spent[t] for t in timed) - sum(spent[i] for i in inner)
            shares[label].append(max(own, 0) / WRITE_N / 1000)
    WRITE_PARTS.clear()
    WRITE_PARTS.extend(
        [
            "## Where a write's CPU goes, part by part",
            "",
            "Each write as the benchmark sends it, in-process and sequential. Top row: its CPU "
            "per request, measured as above. Below: the CPU spent inside each part's own "
            "functions (callees included, nested parts taken out) while the same write ran "
            f"{WRITE_N} times with a timing wrapper on each of those functions. A round trip "
            "costs this process a send, a wake-up and a receive; PostgreSQL's and Redis's "
            "own time is not included. The access log line is part of the request "
            "middleware's row (shown on its own below it).",
            "",
            "| part | " + " | ".join(columns) + " |",
            "| --- |" + " ---: |" * len(columns),
            "| the whole write, µs CPU | " + " | ".join(f"{t:,.0f}" for t in totals) + " |",
        ]
    )
    for label, _, _ in _PARTS:
        WRITE_PARTS.append(f"| {label} | " + " | ".join(f"{v:,.0f}" for v in shares[label]) + " |")
    counted = [label for label, _, _ in _PARTS if not label.startswith("of which")]
    rest = [t - sum(shares[label][i] for label in counted) for i, t in enumerate(totals)]
    WRITE_PARTS.append(
        "| the rest: uvicorn-less ASGI plumbing, Starlette's and FastAPI's layers, the "
        "harness | " + " | ".join(f"{v:,.0f}" for v in rest) + " |"
    )


def write(rows: list[tuple[str, float]], output: Path, command: str) -> None:
    lines = [
        "# Where a request's CPU goes",
        "",
        f"Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs. In-process, sequential: "
        "CPU microseconds this process spends per request (PostgreSQL's and Redis's own time "
        "is not included). Rows that are differences (rate limit, metrics, pin) come from "
        "the same request measured with and without the part: the median difference over "
        "ten rounds that alternate the two.",
        "",
        "| part | µs CPU | budget (issues 8, 19) | verdict |",
        "| --- | ---: | ---: | --- |",
    ]
    for name, value in rows:
        budget = BUDGET.get(name)
        verdict = "" if budget is None else ("met" if value <= budget else "**over**")
        lines.append(f"| {name} | {value:,.0f} | {'' if budget is None else budget} | {verdict} |")
    if WRITE_PARTS:
        lines += ["", *WRITE_PARTS]
    output.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path)
    parser.add_argument(
        "--only",
        choices=["writes"],
        help="measure only the write rows (and print them; --output is then not written "
        "unless given)",
    )
    parser.add_argument(
        "--cprofile",
        action="store_true",
        help="also print function profiles of a cache hit, a miss and a create",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a twentieth of the calls and two rounds: proves every part runs (the test "
        "suite's smoke run), measures nothing worth keeping",
    )
    args = parser.parse_args()
    if args.quick:
        global N, WRITE_N, ROUNDS
        N, WRITE_N, ROUNDS = N // 20, WRITE_N // 20, 2
    only_writes = args.only == "writes"
    if args.output is None and not only_writes:
        args.output = ROOT / "docs" / "profile.md"
    if args.cprofile:
        global PROFILE_OUT
        PROFILE_OUT = sys.stderr
    database = f"tessera_profile_{uuid.uuid4().hex[:8]}"
    prefix = f"p{uuid.uuid4().hex[:5]}_"
    server = SERVER_URL.rsplit("/", 1)[0]

    async def admin(statement: str) -> None:
        conn = await asyncpg.connect(SERVER_URL)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{database}"'))
    keys = Path(tempfile.mkdtemp(prefix="tessera-profile-"))
    try:
        dev, url, issuer_server = serve_issuer(keys)
        settings = Settings(
            database_url=f"{server}/{database}",
            redis_url=REDIS_URL,
            auth_issuer=url,
            db_tenant_role_prefix=prefix,
            rate_limit_default="1000000/minute",
            log_level="INFO",
            environment="development",
        )
        # Access logs are on, as in production, written where they cost what a file costs.
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            # The loop uvicorn runs Tessera on.
            rows = uvloop.run(measure(settings, dev, only_writes=only_writes))
        issuer_server.should_exit = True
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))

        async def drop_roles() -> None:
            conn = await asyncpg.connect(SERVER_URL)
            try:
                for row in await conn.fetch(
                    "SELECT rolname FROM pg_roles WHERE rolname LIKE $1", prefix + "%"
                ):
                    await conn.execute(f'DROP ROLE "{row["rolname"]}"')
            finally:
                await conn.close()

        asyncio.run(drop_roles())
    command = "uv run python scripts/profile_request.py" + " ".join(
        [""] + (["--quick"] if args.quick else []) + (["--only writes"] if only_writes else [])
    )
    if args.output is None:
        for name, value in rows:
            print(f"| {name} | {value:,.0f} |")
        print("\n".join(["", *WRITE_PARTS]))
        return 0
    write(rows, args.output, command)
    print(args.output.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
