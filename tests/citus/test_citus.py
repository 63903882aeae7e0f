"""Tessera on a Citus cluster with schema-based sharding: a coordinator and two workers on
loopback, started for this module (scripts/citus.py) and removed after it.

The tests are the steps of one scenario and run in order, sharing the cluster and its
tenants: migrate, provision, the tenant API, a live move, fleet migrations, suspend and
delete. Skipped, with the reason, where Citus is not installed (docs/citus.md).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.db.engine import build_engine
from app.db.migrate import migrate_tenants
from app.services.provisioning import create_tenant
from scripts.citus import CitusCluster, Node, citus_missing
from tests.conftest import REDIS_URL, MakeToken, RunningIssuer
from tests.factories import post_project, post_task
from tests.integration.test_fleet_migration import tree_with_extra_migration
from tests.support import assert_problem, eventually, running_app

MISSING = citus_missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"Citus: {MISSING}")

Headers = dict[str, str]
TENANTS = 6


@pytest.fixture(scope="module")
def cluster() -> Iterator[CitusCluster]:
    started = time.monotonic()
    running = CitusCluster().start()
    print(f"\nCitus cluster up in {time.monotonic() - started:.1f} s: {running.url}")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def citus_settings(cluster: CitusCluster, issuer: RunningIssuer) -> Settings:
    return Settings(
        environment="test",
        database_url=cluster.url,
        redis_url=REDIS_URL,
        log_level="WARNING",
        db_pool_size=5,
        auth_issuer=issuer.url,
        rate_limit_default="100000/minute",  # the move test's callers loop as fast as they can
        tenant_purge_grace_seconds=0,  # DELETE purges at once, as the deletion test expects
    )


@pytest.fixture(scope="module")
async def citus_engine(citus_settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = build_engine(citus_settings)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="module")
async def api(
    citus_settings: Settings, citus_engine: AsyncEngine
) -> AsyncIterator[httpx.AsyncClient]:
    """Tessera served (over ASGI, lifespan run) against the coordinator."""
    async with running_app(citus_settings) as (_, client):
        yield client


@dataclass
class Fleet:
    """What the steps share: the tenants provisioned and their callers' headers."""

    slugs: list[str] = field(default_factory=list)
    headers: dict[str, Headers] = field(default_factory=dict)
    projects: dict[str, str] = field(default_factory=dict)  # slug -> a project id it owns


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return Fleet()


@pytest.fixture(scope="module")
def admin_headers(make_token: MakeToken) -> Headers:
    return {"Authorization": "Bearer " + make_token(tenant=None, scopes="platform:admin")}


async def query(node: Node, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Rows from one node; on a worker the shards are visible too (Citus hides them)."""
    conn = await asyncpg.connect(
        node.url, server_settings={"citus.override_table_visibility": "off"}
    )
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def schema_placements(cluster: CitusCluster) -> dict[str, set[str]]:
    """Tenant schema -> the nodes holding its shards, as citus_schemas and citus_shards say."""
    rows = await query(
        cluster.coordinator,
        "SELECT cs.schema_name::text AS schema, s.nodename || ':' || s.nodeport AS node "
        "FROM citus_schemas cs JOIN citus_shards s USING (colocation_id)",
    )
    placements: dict[str, set[str]] = {}
    for row in rows:
        placements.setdefault(row["schema"], set()).add(row["node"])
    return placements


def schema_of(slug: str) -> str:
    return "tenant_" + slug.replace("-", "_")


# --- the steps ------------------------------------------------------------------------------


def test_tessera_migrate_keeps_the_platform_schema_on_the_coordinator(
    cluster: CitusCluster, citus_settings: Settings
) -> None:
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": cluster.url, "REDIS_URL": REDIS_URL}
    for _ in range(2):  # idempotent
        result = subprocess.run(
            [sys.executable, "-m", "app.cli", "migrate"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr + cluster.log_tail()
        assert "shared schema: at" in result.stdout
    distributed = cluster.psql(
        cluster.coordinator,
        "SELECT count(*) FROM pg_dist_schema WHERE schemaid = 'platform'::regnamespace",
    )
    assert distributed.strip() == "0"
    citus_table = cluster.psql(
        cluster.coordinator,
        "SELECT count(*) FROM pg_dist_partition WHERE logicalrelid = 'platform.tenants'::regclass",
    )
    assert citus_table.strip() == "0"
    triggers = cluster.psql(
        cluster.coordinator,
        "SELECT string_agg(tgname, ',' ORDER BY tgname) FROM pg_trigger "
        "WHERE tgrelid = 'platform.tenants'::regclass AND NOT tgisinternal",
    )
    assert triggers.strip() == "tenants_notify,tenants_notify_truncate"


async def test_tenants_are_provisioned_on_both_workers_with_their_roles_on_every_node(
    cluster: CitusCluster,
    api: httpx.AsyncClient,
    admin_headers: Headers,
    make_token: MakeToken,
    citus_engine: AsyncEngine,
    citus_settings: Settings,
    fleet: Fleet,
) -> None:
    run = uuid.uuid4().hex[:6]
    for i in range(TENANTS - 1):
        slug = f"c{run}-{i}"
        response = await api.post(
            "/admin/v1/tenants", json={"slug": slug, "name": f"Tenant {i}"}, headers=admin_headers
        )
        assert response.status_code == 201, response.text
        assert response.json()["schema_version"] == "t0001"
        fleet.slugs.append(slug)
    # The other way provisioning builds a schema: replaying the migrations' rendered SQL.
    replayed = await create_tenant(
        citus_engine,
        citus_settings,
        slug=f"c{run}-m",
        name="From migrations",
        plan="free",
        rate_limit=None,
        from_migrations=True,
    )
    fleet.slugs.append(replayed.slug)
    for slug in fleet.slugs:
        token = make_token(tenant=slug, scopes="api:read api:write", sub=f"user-{slug}")
        fleet.headers[slug] = {"Authorization": f"Bearer {token}"}

    placements = await schema_placements(cluster)
    workers = {worker.address for worker in cluster.workers}
    for slug in fleet.slugs:
        assert len(placements[schema_of(slug)]) == 1, placements[schema_of(slug)]
        assert placements[schema_of(slug)] <= workers
    used = {node for slug in fleet.slugs for node in placements[schema_of(slug)]}
    assert used == workers, f"schemas not spread over both workers: {placements}"
    spread = {w: sum(placements[schema_of(s)] == {w} for s in fleet.slugs) for w in sorted(used)}
    print(f"\nschemas per worker: {spread}")

    tables = await query(
        cluster.coordinator,
        "SELECT table_name::text AS name FROM citus_tables WHERE table_name::text LIKE $1",
        schema_of(fleet.slugs[0]) + ".%",
    )
    assert {row["name"].split(".")[1] for row in tables} == {
        "alembic_version",
        "projects",
        "tasks",
        "audit_events",
        "idempotency_keys",
    }
    for node in cluster.nodes:
        roles = await query(
            node,
            "SELECT rolname FROM pg_roles WHERE rolname = ANY($1) AND rolcanlogin",
            [schema_of(s) for s in fleet.slugs],
        )
        assert len(roles) == TENANTS, f"{node.name}: {roles}"


async def test_every_tenant_creates_reads_updates_and_deletes_through_the_coordinator(
    api: httpx.AsyncClient, fleet: Fleet
) -> None:
    for slug in fleet.slugs:
        headers = fleet.headers[slug]
        project = await post_project(api, headers, name=f"Project of {slug}")
        fleet.projects[slug] = project["id"]
        fetched = await api.get(f"/v1/projects/{project['id']}", headers=headers)
        assert fetched.status_code == 200 and fetched.json() == project
        stale = await api.patch(
            f"/v1/projects/{project['id']}",
            json={"name": "renamed"},
            headers={**headers, "If-Match": '"not-the-etag"'},
        )
        assert_problem(stale, 412, "precondition_failed")
        renamed = await api.patch(
            f"/v1/projects/{project['id']}",
            json={"name": "renamed"},
            headers={**headers, "If-Match": fetched.headers["etag"]},
        )
        assert renamed.status_code == 200 and renamed.json()["version"] == 2
        task = await post_task(api, headers, project["id"], labels=["citus"])
        listed = await api.get(
            f"/v1/projects/{project['id']}/tasks", params={"label": "citus"}, headers=headers
        )
        assert [t["id"] for t in listed.json()["items"]] == [task["id"]]
        deleted = await api.delete(f"/v1/tasks/{task['id']}", headers=headers)
        assert deleted.status_code == 204
        audit = await api.get("/v1/audit-events", headers=headers)
        assert [e["action"] for e in audit.json()["items"]][:2] == ["task.deleted", "task.created"]


async def test_idempotency_keys_claim_save_and_replay_on_every_worker(
    api: httpx.AsyncClient, fleet: Fleet
) -> None:
    """The claim (the key's lock and record in one statement), the save sent with the
    COMMIT, the replay and the reuse, on tenants whose schemas live on either worker; the
    same key in two tenants is two keys."""
    for slug in fleet.slugs:
        keyed = {**fleet.headers[slug], "Idempotency-Key": "citus-key"}
        first = await api.post("/v1/projects", json={"name": "once"}, headers=keyed)
        assert first.status_code == 201, first.text
        replay = await api.post("/v1/projects", json={"name": "once"}, headers=keyed)
        assert replay.status_code == 201 and replay.headers["idempotent-replayed"] == "true"
        assert replay.content == first.content
        reused = await api.post("/v1/projects", json={"name": "other"}, headers=keyed)
        assert_problem(reused, 422, "idempotency_key_reused")


async def test_another_tenants_ids_answer_404_and_its_schema_is_refused(
    cluster: CitusCluster, api: httpx.AsyncClient, fleet: Fleet
) -> None:
    owner, intruder = fleet.slugs[0], fleet.slugs[1]
    project_id = fleet.projects[owner]
    headers = fleet.headers[intruder]
    assert_problem(
        await api.get(f"/v1/projects/{project_id}", headers=headers), 404, "project_not_found"
    )
    patched = await api.patch(f"/v1/projects/{project_id}", json={"name": "x"}, headers=headers)
    assert_problem(patched, 404, "project_not_found")
    assert_problem(
        await api.delete(f"/v1/projects/{project_id}", headers=headers), 404, "project_not_found"
    )
    posted = await api.post(
        f"/v1/projects/{project_id}/tasks", json={"title": "t"}, headers=headers
    )
    assert_problem(posted, 404, "project_not_found")
    still = await api.get(f"/v1/projects/{project_id}", headers=fleet.headers[owner])
    assert still.status_code == 200 and still.json()["name"] == "renamed"
    # Isolation twice: as the intruder's role, the owner's schema is refused outright.
    conn = await asyncpg.connect(cluster.url)
    try:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL ROLE {schema_of(intruder)}")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch(f"SELECT * FROM {schema_of(owner)}.projects")
    finally:
        await conn.close()


@dataclass
class MoveUnderLoad:
    response: httpx.Response
    seconds: float
    outcomes: list[tuple[str, int, float, float]]  # (read or write, status, start, end)
    created: list[uuid.UUID]  # the ids of the projects the writes created

    def slowest_ms(self, kind: str) -> float:
        return max(end - start for k, _, start, end in self.outcomes if k == kind) * 1000

    def count(self, kind: str) -> int:
        return sum(k == kind for k, *_ in self.outcomes)

    def reads_during_slowest_write(self) -> int:
        """Reads that started and ended while the slowest write was waiting."""
        writes = [(end - start, start, end) for k, _, start, end in self.outcomes if k == "write"]
        _, began, ended = max(writes)
        return sum(
            k == "read" and began <= start and end <= ended for k, _, start, end in self.outcomes
        )


async def move_under_load(
    api: httpx.AsyncClient, admin_headers: Headers, fleet: Fleet, slug: str, body: dict[str, Any]
) -> MoveUnderLoad:
    """Move `slug` through the admin API while its own caller writes and reads in a loop."""
    headers = fleet.headers[slug]
    outcomes: list[tuple[str, int, float, float]] = []
    created: list[uuid.UUID] = []
    moving = True

    async def writer() -> None:
        while moving:
            started = time.perf_counter()
            wrote = await api.post("/v1/projects", json={"name": "during"}, headers=headers)
            outcomes.append(("write", wrote.status_code, started, time.perf_counter()))
            if wrote.status_code == 201:
                created.append(uuid.UUID(wrote.json()["id"]))

    async def reader() -> None:  # on its own, so that a write held back does not hold it
        while moving:
            started = time.perf_counter()
            read = await api.get(f"/v1/projects/{fleet.projects[slug]}", headers=headers)
            outcomes.append(("read", read.status_code, started, time.perf_counter()))

    load = [asyncio.create_task(writer()), asyncio.create_task(reader())]
    await asyncio.sleep(0.2)
    started = time.perf_counter()
    response = await api.post(f"/admin/v1/tenants/{slug}/move", json=body, headers=admin_headers)
    seconds = time.perf_counter() - started
    await asyncio.sleep(0.2)
    moving = False
    await asyncio.gather(*load)
    return MoveUnderLoad(response, seconds, outcomes, created)


async def test_a_live_tenant_moves_to_the_other_worker_and_back_and_keeps_serving(
    cluster: CitusCluster, api: httpx.AsyncClient, admin_headers: Headers, fleet: Fleet
) -> None:
    slug = fleet.slugs[0]
    schema, headers = schema_of(slug), fleet.headers[slug]
    (source,) = (await schema_placements(cluster))[schema]
    (target,) = {w.address for w in cluster.workers} - {source}
    for body, destination, origin in [
        ({"node": target}, target, source),
        ({"node": source}, source, target),
    ]:
        moved = await move_under_load(api, admin_headers, fleet, slug, body)
        assert moved.response.status_code == 200, moved.response.text
        assert moved.response.json() == {
            "slug": slug,
            "schema": schema,
            "node": destination,
            "previous_node": origin,
        }
        assert (await schema_placements(cluster))[schema] == {destination}
        statuses = {(kind, status) for kind, status, *_ in moved.outcomes}
        reads_meanwhile = moved.reads_during_slowest_write()
        print(
            f"\nmove {body}: {moved.seconds:.2f} s; meanwhile {moved.count('write')} writes "
            f"(slowest {moved.slowest_ms('write'):.0f} ms) and {moved.count('read')} reads "
            f"(slowest {moved.slowest_ms('read'):.0f} ms; {reads_meanwhile} of them while the "
            f"slowest write waited), statuses {sorted(statuses)}"
        )
        assert statuses == {("write", 201), ("read", 200)}
        assert reads_meanwhile > 0  # reads go on while writes are held back

        # Every write answered 201 is there, on the worker it moved to, and so is the rest.
        kept = await query(
            cluster.coordinator,
            f"SELECT count(*) FILTER (WHERE id = ANY($1)) AS created, "
            f"count(*) FILTER (WHERE name = 'renamed') AS renamed FROM {schema}.projects",
            moved.created,
        )
        assert (kept[0]["created"], kept[0]["renamed"]) == (len(moved.created), 1)
        written = await post_project(api, headers, name="after the move")
        fetched = await api.get(f"/v1/projects/{written['id']}", headers=headers)
        assert fetched.status_code == 200

    again = await api.post(
        f"/admin/v1/tenants/{slug}/move", json={"node": source}, headers=admin_headers
    )
    assert again.status_code == 200 and again.json()["previous_node"] == source
    unknown = await api.post(
        f"/admin/v1/tenants/{slug}/move", json={"node": "127.0.0.1:1"}, headers=admin_headers
    )
    assert_problem(unknown, 422, "unknown_node")
    coordinator = await api.post(
        f"/admin/v1/tenants/{slug}/move",
        json={"node": cluster.coordinator.address},
        headers=admin_headers,
    )
    assert_problem(coordinator, 422, "unknown_node")


async def test_fleet_migrations_no_op_then_additive_reach_every_tenant(
    cluster: CitusCluster,
    api: httpx.AsyncClient,
    citus_engine: AsyncEngine,
    fleet: Fleet,
    tmp_path: Path,
) -> None:
    noop = await migrate_tenants(citus_engine, slugs=fleet.slugs)
    assert noop.migrated == [] and noop.failed == {}
    assert sorted(noop.current) == sorted(fleet.slugs)

    tree = tree_with_extra_migration(tmp_path)  # ADD COLUMN and CREATE INDEX
    report = await migrate_tenants(citus_engine, slugs=fleet.slugs, script_dir=tree)
    assert report.failed == {}, report.failed
    assert report.migrated == sorted(fleet.slugs)
    for slug in fleet.slugs:
        columns = await query(
            cluster.coordinator,
            "SELECT 1 FROM information_schema.columns WHERE table_schema = $1 "
            "AND table_name = 'projects' AND column_name = 'archived_at'",
            schema_of(slug),
        )
        indexes = await query(
            cluster.coordinator,
            "SELECT 1 FROM pg_indexes WHERE schemaname = $1 "
            "AND indexname = 'ix_projects_archived_at'",
            schema_of(slug),
        )
        assert columns and indexes, slug
    # The shards on the workers have the column and the index too.
    for worker in cluster.workers:
        shard_indexes = await query(
            worker,
            "SELECT count(*) AS n FROM pg_indexes "
            "WHERE indexname LIKE 'ix\\_projects\\_archived\\_at\\_%'",
        )
        assert shard_indexes[0]["n"] >= 1, worker.name
    versions = await query(
        cluster.coordinator,
        "SELECT DISTINCT schema_version FROM platform.tenants WHERE slug = ANY($1)",
        fleet.slugs,
    )
    assert [row["schema_version"] for row in versions] == ["t9001"]
    for slug in fleet.slugs[:2]:
        await post_project(api, fleet.headers[slug], name="after the migration")


async def test_suspend_is_seen_by_another_replica_and_delete_removes_schema_and_role_everywhere(
    cluster: CitusCluster,
    api: httpx.AsyncClient,
    citus_settings: Settings,
    admin_headers: Headers,
    fleet: Fleet,
) -> None:
    slug = fleet.slugs[0]  # the tenant that moved
    headers = fleet.headers[slug]
    async with running_app(citus_settings) as (_, replica):
        assert (await replica.get("/v1/tenant", headers=headers)).status_code == 200
        suspended = await api.post(f"/admin/v1/tenants/{slug}/suspend", headers=admin_headers)
        assert suspended.status_code == 200

        async def replica_status() -> int:
            return (await replica.get("/v1/tenant", headers=headers)).status_code

        await eventually(replica_status, 403, within=1.5)
    assert_problem(await api.get("/v1/projects", headers=headers), 403, "tenant_suspended")

    deleted = await api.delete(f"/admin/v1/tenants/{slug}", headers=admin_headers)
    assert deleted.status_code == 204, deleted.text
    schema = schema_of(slug)
    for node in cluster.nodes:
        left = await query(
            node,
            "SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = $1) AS schemas, "
            "(SELECT count(*) FROM pg_roles WHERE rolname = $1) AS roles",
            schema,
        )
        assert (left[0]["schemas"], left[0]["roles"]) == (0, 0), node.name
    assert schema not in await schema_placements(cluster)
    assert_problem(
        await api.get(f"/admin/v1/tenants/{slug}", headers=admin_headers), 404, "tenant_not_found"
    )
    # The others are untouched.
    other = fleet.slugs[1]
    assert (await api.get("/v1/projects", headers=fleet.headers[other])).status_code == 200
