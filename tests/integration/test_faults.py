"""Faults under load (CONTRACT section 10, issue 15): eight writers of four tenants against a
served Tessera while its PostgreSQL is restarted (`pg_ctl -m fast`), then crashed
(`-m immediate`), and its Redis restarted. Every request answers 201/200, or 503
`database_unavailable` within 5 s while PostgreSQL is away, never a 500 and never a dropped
connection; every 201 is readable afterwards in its own tenant and in no other; the service
is ready again by itself within seconds of PostgreSQL's return. The figures go to
docs/reliability.md (run with `-s` to see them)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import pytest

from app.core.config import Settings
from app.db.engine import build_engine
from app.db.migrate import migrate_shared
from app.db.repositories.tenants import TenantRecord
from app.db.tenancy import quote_ident
from app.services.provisioning import create_tenant
from tests.conftest import RunningIssuer
from tests.redis_layer.redis_servers import RedisProcess, start_redis, stop_redis
from tests.servers import PostgresCluster, app_environment, uvicorn

WRITERS = 8
TENANTS = 4
STEADY_SECONDS = 0.6  # of undisturbed load before and after each fault
DOWN_SECONDS = 0.3  # how long PostgreSQL (or Redis) stays away
# Each twice: the 500 this guards against (a connection refused by asyncpg in the moment
# between the server's FATAL message and the end of its stream) showed in 1 run of 4 with
# one of each, before app/db/pool.py recognised it.
POSTGRES_FAULTS = ("fast", "immediate", "fast", "immediate")
RECOVERY_LIMIT_SECONDS = 10.0
ANSWER_LIMIT_SECONDS = 5.0  # CONTRACT section 10: a 503 within 5 s, never a hang


@dataclass
class Answer:
    method: str
    status: int  # 0: no HTTP answer at all (connection dropped, timed out)
    code: str | None
    started: float
    seconds: float
    detail: str = ""


@dataclass
class Load:
    answers: list[Answer] = field(default_factory=list)
    created: dict[str, list[str]] = field(default_factory=dict)  # slug → project ids (201)
    stop: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    running = PostgresCluster()
    try:
        running.start()
        yield running
    finally:
        running.destroy()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    running = start_redis(tmp_path)
    yield running
    stop_redis(running)


@pytest.fixture
async def fault_settings(
    cluster: PostgresCluster, private_redis: RedisProcess, issuer: RunningIssuer
) -> AsyncIterator[Settings]:
    admin = await asyncpg.connect(cluster.url())
    try:
        await admin.execute("CREATE DATABASE tessera")
    finally:
        await admin.close()
    yield Settings(
        environment="test",
        database_url=cluster.url("tessera"),
        redis_url=private_redis.url,
        auth_issuer=issuer.url,
        log_level="WARNING",
    )


async def provision(settings: Settings) -> list[TenantRecord]:
    engine = build_engine(settings)
    try:
        await migrate_shared(engine)
        return [
            await create_tenant(
                engine, settings, slug=f"fault-{n}", name=f"Fault {n}", plan="pro", rate_limit=None
            )
            for n in range(TENANTS)
        ]
    finally:
        await engine.dispose()


async def call(
    client: httpx.AsyncClient, load: Load, method: str, url: str, **kwargs: object
) -> httpx.Response | None:
    started = time.monotonic()
    try:
        response = await client.request(method, url, **kwargs)  # type: ignore[arg-type]
    except httpx.HTTPError as exc:
        load.answers.append(Answer(method, 0, None, started, time.monotonic() - started, repr(exc)))
        return None
    code = None
    if response.headers.get("content-type") == "application/problem+json":
        code = response.json().get("code")
    load.answers.append(
        Answer(method, response.status_code, code, started, time.monotonic() - started)
    )
    return response


async def writer(
    client: httpx.AsyncClient, load: Load, number: int, slug: str, headers: dict[str, str]
) -> None:
    """Create a project, read it back (a cached read: the parked read-only path), repeat."""
    sequence = 0
    while not load.stop.is_set():
        sequence += 1
        body = {"name": f"writer {number} #{sequence}"}
        created = await call(client, load, "POST", "/v1/projects", json=body, headers=headers)
        if created is not None and created.status_code == 201:
            project_id = created.json()["id"]
            load.created[slug].append(project_id)
            await call(client, load, "GET", f"/v1/projects/{project_id}", headers=headers)
        await asyncio.sleep(0.005)


async def until(probe: Callable[[], bool], within: float, what: str) -> float:
    """Seconds until `probe()` holds; fail after `within`."""
    started = time.monotonic()
    while not probe():
        assert time.monotonic() - started < within, f"{what}: not within {within} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def ready_again(client: httpx.AsyncClient) -> float:
    """Seconds until /readyz answers 200 (the database checked again)."""
    started = time.monotonic()
    while True:
        try:
            if (await client.get("/readyz")).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        assert time.monotonic() - started < RECOVERY_LIMIT_SECONDS, "not ready again"
        await asyncio.sleep(0.02)


def first_write_after(load: Load, moment: float) -> Callable[[], bool]:
    return lambda: any(
        a.method == "POST" and a.status == 201 and a.started >= moment for a in load.answers
    )


async def test_writers_of_four_tenants_survive_postgres_restart_crash_and_redis_restart(
    cluster: PostgresCluster,
    private_redis: RedisProcess,
    fault_settings: Settings,
    make_token: Callable[..., str],
    tmp_path: Path,
) -> None:
    tenants = await provision(fault_settings)
    env = app_environment(
        fault_settings,
        AUTH_ISSUER=fault_settings.auth_issuer,
        RATE_LIMIT_DEFAULT="1000000/minute",
        DB_POOL_SIZE="4",
        DB_MAX_OVERFLOW="4",
    )
    log = tmp_path / "uvicorn.log"
    load = Load(created={t.slug: [] for t in tenants})
    tokens = {t.slug: {"Authorization": f"Bearer {make_token(tenant=t.slug)}"} for t in tenants}
    figures: dict[str, str] = {}
    phases: list[tuple[str, float, float]] = []  # name, from, to (monotonic)

    with uvicorn(fault_settings, "app.main:app", env=env, log=log) as (_, base):
        limits = httpx.Limits(max_connections=WRITERS + 2)
        async with httpx.AsyncClient(base_url=base, timeout=15, limits=limits) as client:
            writers = [
                asyncio.create_task(
                    writer(
                        client,
                        load,
                        n,
                        tenants[n % TENANTS].slug,
                        tokens[tenants[n % TENANTS].slug],
                    )
                )
                for n in range(WRITERS)
            ]
            await asyncio.sleep(STEADY_SECONDS)

            for round_, mode in enumerate(POSTGRES_FAULTS, 1):
                began = time.monotonic()
                await asyncio.to_thread(cluster.stop, mode)
                await asyncio.sleep(DOWN_SECONDS)
                await asyncio.to_thread(cluster.start)
                back = time.monotonic()
                ready = await ready_again(client)
                write = await until(
                    first_write_after(load, back), RECOVERY_LIMIT_SECONDS, "a 201 after " + mode
                )
                name = f"postgres -m {mode} ({round_})"
                figures[f"{name}: away for"] = f"{back - began:.2f} s"
                figures[f"{name}: /readyz 200 after its return"] = f"{ready:.2f} s"
                figures[f"{name}: first 201 after its return"] = f"{write:.2f} s"
                await asyncio.sleep(STEADY_SECONDS)
                phases.append((name, began, time.monotonic()))

            began = time.monotonic()
            await asyncio.to_thread(stop_redis, private_redis)
            await asyncio.sleep(DOWN_SECONDS)
            again = await asyncio.to_thread(start_redis, tmp_path, port=private_redis.port)
            private_redis.process = again.process  # the fixture stops this one
            await asyncio.sleep(STEADY_SECONDS)
            phases.append(("redis restart", began, time.monotonic()))

            load.stop.set()
            await asyncio.gather(*writers)

            # Afterwards, through the API: each acknowledged project in its own tenant, and
            # under another tenant's token a 404, exactly as an id that does not exist.
            reads: Counter[tuple[str, int]] = Counter()
            for index, tenant in enumerate(tenants):
                other = tenants[(index + 1) % TENANTS]
                for project_id in load.created[tenant.slug]:
                    own = await client.get(
                        f"/v1/projects/{project_id}", headers=tokens[tenant.slug]
                    )
                    foreign = await client.get(
                        f"/v1/projects/{project_id}", headers=tokens[other.slug]
                    )
                    reads["own", own.status_code] += 1
                    reads["other", foreign.status_code] += 1

    # In PostgreSQL: each tenant's schema holds its acknowledged projects and no other's.
    stored: dict[str, set[str]] = {}
    conn = await asyncpg.connect(cluster.url("tessera"))
    try:
        for tenant in tenants:
            rows = await conn.fetch(f"SELECT id::text FROM {quote_ident(tenant.schema)}.projects")
            stored[tenant.slug] = {row["id"] for row in rows}
    finally:
        await conn.close()

    server_log = log.read_text()
    statuses = Counter((a.method, a.status, a.code) for a in load.answers)
    figures["answers (method, status, code)"] = ", ".join(
        f"{m} {s} {c or ''}".strip() + f": {n}"
        for (m, s, c), n in sorted(statuses.items(), key=str)
    )
    redis_phase = next((start, end) for name, start, end in phases if name == "redis restart")
    during_redis = [a for a in load.answers if redis_phase[0] <= a.started <= redis_phase[1]]
    figures["while Redis restarted"] = str(dict(Counter(a.status for a in during_redis)))
    slow_503 = max((a.seconds for a in load.answers if a.status == 503), default=0.0)
    figures["slowest 503"] = f"{slow_503:.2f} s"
    for name, value in figures.items():
        print(f"{name}: {value}")

    unexpected = [
        a
        for a in load.answers
        if (a.method, a.status) not in {("POST", 201), ("GET", 200)}
        and (a.status, a.code) != (503, "database_unavailable")
    ]
    errors = "\n".join(line for line in server_log.splitlines() if '"level": "error"' in line)
    assert not unexpected, f"{unexpected[:5]}\n{errors[:3000]}"
    assert not errors and "Traceback" not in server_log, server_log[-3000:]
    assert slow_503 < ANSWER_LIMIT_SECONDS
    assert during_redis and all(a.status in (200, 201) for a in during_redis), Counter(
        a.status for a in during_redis
    )
    assert sum(len(ids) for ids in load.created.values()) > 0
    assert reads == Counter(
        {
            ("own", 200): sum(map(len, load.created.values())),
            ("other", 404): sum(map(len, load.created.values())),
        }
    ), reads
    for tenant in tenants:
        acknowledged = set(load.created[tenant.slug])
        assert acknowledged <= stored[tenant.slug], "an acknowledged write was lost"
        for other in tenants:
            if other is not tenant:
                assert not acknowledged & stored[other.slug], "a write landed in another tenant"
