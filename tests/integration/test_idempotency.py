"""Idempotency-Key on creating POSTs: replay, mismatch, concurrency, expiry, per tenant."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.executor import TenantSession
from app.db.pool import TenantConnections
from app.db.repositories import idempotency as idempotency_repo
from app.db.repositories.tenants import TenantRecord
from app.db.tenancy import TenantSchema, quote_ident
from app.services import idempotency
from app.services.idempotency import StoredResponse
from tests.conftest import MakeToken
from tests.factories import post_project
from tests.integration.test_quotas import tenant_on_plan
from tests.support import assert_problem, count_rows, eventually

Headers = dict[str, str]


async def test_a_repeat_with_the_same_body_replays_the_first_response_and_creates_nothing(
    client: httpx.AsyncClient, headers: Headers, engine: AsyncEngine, tenant: TenantRecord
) -> None:
    keyed = {**headers, "Idempotency-Key": "create-apollo-1"}
    first = await client.post(
        "/v1/projects", json={"name": "Apollo", "description": "d"}, headers=keyed
    )
    assert first.status_code == 201
    assert "idempotent-replayed" not in first.headers
    # Same body, other key order and spacing: the same request.
    again = await client.post(
        "/v1/projects",
        content=b'{ "description": "d",  "name": "Apollo" }',
        headers={**keyed, "Content-Type": "application/json"},
    )
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["etag"] == first.headers["etag"]
    assert again.headers["content-type"] == "application/json"
    assert await count_rows(engine, tenant, "projects") == 1
    assert await count_rows(engine, tenant, "audit_events") == 1


async def test_the_same_key_with_another_body_answers_422(
    client: httpx.AsyncClient, headers: Headers, engine: AsyncEngine, tenant: TenantRecord
) -> None:
    keyed = {**headers, "Idempotency-Key": "k1"}
    assert (await client.post("/v1/projects", json={"name": "a"}, headers=keyed)).status_code == 201
    response = await client.post("/v1/projects", json={"name": "b"}, headers=keyed)
    assert_problem(response, 422, "idempotency_key_reused")
    project = (await client.get("/v1/projects", headers=headers)).json()["items"][0]
    # The same key on another path is another request too.
    other = await client.post(
        f"/v1/projects/{project['id']}/tasks", json={"name": "a"}, headers=keyed
    )
    assert other.status_code == 422
    assert await count_rows(engine, tenant, "projects") == 1


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "tab\there", "caf\u00e9"])
async def test_malformed_keys_answer_400(
    client: httpx.AsyncClient, headers: Headers, key: str
) -> None:
    response = await client.post(
        "/v1/projects",
        json={"name": "a"},
        headers=[*headers.items(), ("Idempotency-Key", key.encode("utf-8"))],  # type: ignore[list-item]
    )
    assert_problem(response, 400, "invalid_idempotency_key")


async def test_longest_and_punctuated_keys_are_accepted(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    for key in ("x" * 255, "!~{}[]:;\"'<>?/\\|"):
        response = await client.post(
            "/v1/projects", json={"name": "a"}, headers={**headers, "Idempotency-Key": key}
        )
        assert response.status_code == 201, response.text


async def test_eight_concurrent_duplicates_create_exactly_one_project(
    client: httpx.AsyncClient, headers: Headers, engine: AsyncEngine, tenant: TenantRecord
) -> None:
    keyed = {**headers, "Idempotency-Key": "burst-1"}
    responses = await asyncio.gather(
        *(client.post("/v1/projects", json={"name": "once"}, headers=keyed) for _ in range(8))
    )
    created = [r for r in responses if r.status_code == 201]
    fresh = [r for r in created if "idempotent-replayed" not in r.headers]
    assert len(fresh) == 1
    for response in responses:
        if response.status_code == 201:
            assert response.json() == fresh[0].json()
        else:
            assert_problem(response, 409, "idempotency_key_in_use")
    assert await count_rows(engine, tenant, "projects") == 1
    # Once the first has finished, every repeat is a replay.
    later = await client.post("/v1/projects", json={"name": "once"}, headers=keyed)
    assert later.headers["idempotent-replayed"] == "true"
    assert later.json() == fresh[0].json()


async def test_keys_are_per_tenant(
    client: httpx.AsyncClient,
    headers: Headers,
    other_tenant: TenantRecord,
    auth: Callable[..., Headers],
) -> None:
    mine = await client.post(
        "/v1/projects", json={"name": "a"}, headers={**headers, "Idempotency-Key": "shared"}
    )
    theirs = await client.post(
        "/v1/projects",
        json={"name": "a"},
        headers={**auth(other_tenant), "Idempotency-Key": "shared"},
    )
    assert theirs.status_code == 201
    assert "idempotent-replayed" not in theirs.headers
    assert theirs.json()["id"] != mine.json()["id"]


async def test_an_expired_key_is_ignored_and_replaced(
    client: httpx.AsyncClient, headers: Headers, engine: AsyncEngine, tenant: TenantRecord
) -> None:
    keyed = {**headers, "Idempotency-Key": "old"}
    first = await client.post("/v1/projects", json={"name": "a"}, headers=keyed)
    async with engine.begin() as conn:
        expires = await conn.scalar(
            text(
                f"SELECT expires_at - created_at FROM {quote_ident(tenant.schema)}.idempotency_keys"
            )
        )
        assert expires is not None and expires.total_seconds() >= 24 * 3600
        await conn.execute(
            text(
                f"UPDATE {quote_ident(tenant.schema)}.idempotency_keys "
                "SET expires_at = now() - interval '1 second'"
            )
        )
    second = await client.post("/v1/projects", json={"name": "b"}, headers=keyed)
    assert second.status_code == 201
    assert "idempotent-replayed" not in second.headers
    assert second.json()["id"] != first.json()["id"]
    replay = await client.post("/v1/projects", json={"name": "b"}, headers=keyed)
    assert replay.json()["id"] == second.json()["id"]
    assert await count_rows(engine, tenant, "idempotency_keys") == 1
    # The reclaimed record is kept 24 hours from its new claim, not from the expired one.
    async with engine.connect() as conn:
        left = await conn.scalar(
            text(
                f"SELECT expires_at - now() FROM {quote_ident(tenant.schema)}.idempotency_keys "
                "WHERE state = 'done'"
            )
        )
    assert left is not None and left.total_seconds() > 23 * 3600


async def test_a_committed_record_left_in_progress_is_reclaimed(
    client: httpx.AsyncClient, headers: Headers, engine: AsyncEngine, tenant: TenantRecord
) -> None:
    # Never written by Tessera (a claim commits only as `done`), but a live record that
    # cannot be replayed must not hold its key for a day either.
    async with engine.begin() as conn:
        await conn.execute(
            text(
                f"INSERT INTO {quote_ident(tenant.schema)}.idempotency_keys "
                "(key, request_hash, state, expires_at) "
                "VALUES ('stuck', 'h', 'in_progress', now() + interval '1 hour')"
            )
        )
    keyed = {**headers, "Idempotency-Key": "stuck"}
    first = await client.post("/v1/projects", json={"name": "a"}, headers=keyed)
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    again = await client.post("/v1/projects", json={"name": "a"}, headers=keyed)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()


async def test_a_repeat_while_the_first_runs_answers_409_at_once_and_sees_no_record(
    client: httpx.AsyncClient,
    headers: Headers,
    engine: AsyncEngine,
    tenant: TenantRecord,
    connections: TenantConnections,
) -> None:
    """The first request is a real one held open mid-create, in its own transaction: the
    repeat must not wait for it (it would wait until the test ends), and its claim, not
    committed, is seen by no one."""
    body = {"name": "slow"}
    location = TenantSchema(schema=tenant.schema, role=tenant.db_role)
    creating, release = asyncio.Event(), asyncio.Event()

    async def produce() -> StoredResponse:
        creating.set()
        await release.wait()
        raise RuntimeError("the first request fails")

    async def first() -> None:
        async with connections.transaction(location) as conn:
            claim = idempotency.key_claim("slow-1", "POST", "/v1/projects", body)
            await idempotency.run_once(conn, claim, produce)

    running = asyncio.create_task(first())
    try:
        await asyncio.wait_for(creating.wait(), 5)
        keyed = {**headers, "Idempotency-Key": "slow-1"}
        repeat = await asyncio.wait_for(client.post("/v1/projects", json=body, headers=keyed), 5)
        assert_problem(repeat, 409, "idempotency_key_in_use")
        assert not running.done()
        assert await count_rows(engine, tenant, "idempotency_keys") == 0
    finally:
        release.set()
        with pytest.raises(RuntimeError):
            await running
    # The first failed: its claim rolled back with it, and the key is free.
    assert await count_rows(engine, tenant, "idempotency_keys") == 0
    retry = await client.post("/v1/projects", json=body, headers=keyed)
    assert retry.status_code == 201 and "idempotent-replayed" not in retry.headers
    assert await count_rows(engine, tenant, "projects") == 1


async def test_a_create_that_fails_with_a_problem_leaves_no_record_and_the_key_free(
    client: httpx.AsyncClient, headers: Headers, engine: AsyncEngine, tenant: TenantRecord
) -> None:
    project_id = uuid.uuid4()
    url = f"/v1/projects/{project_id}/tasks"
    keyed = {**headers, "Idempotency-Key": "task-of-nothing"}
    for _ in range(2):  # a 404 is not replayed: the second is answered afresh
        missing = await client.post(url, json={"title": "t"}, headers=keyed)
        assert_problem(missing, 404, "project_not_found")
        assert "idempotent-replayed" not in missing.headers
    assert await count_rows(engine, tenant, "idempotency_keys") == 0
    async with engine.begin() as conn:
        await conn.execute(
            text(
                f"INSERT INTO {quote_ident(tenant.schema)}.projects (id, name) VALUES (:id, 'late')"
            ),
            {"id": project_id},
        )
    created = await client.post(url, json={"title": "t"}, headers=keyed)
    assert created.status_code == 201 and "idempotent-replayed" not in created.headers
    assert await count_rows(engine, tenant, "idempotency_keys") == 1


async def test_a_create_refused_by_a_quota_leaves_the_key_free(
    client: httpx.AsyncClient,
    admin: Headers,
    make_token: MakeToken,
    unique_slug: Callable[[str], str],
) -> None:
    plan, _, headers = await tenant_on_plan(client, admin, make_token, unique_slug, max_projects=0)
    keyed = {**headers, "Idempotency-Key": "over-quota"}
    refused = await client.post("/v1/projects", json={"name": "q"}, headers=keyed)
    assert_problem(refused, 403, "quota_exceeded")
    raised = await client.patch(
        f"/admin/v1/plans/{plan}", json={"max_projects": None}, headers=admin
    )
    assert raised.status_code == 200
    answers: list[httpx.Response] = []

    async def create() -> int:
        answers.append(await client.post("/v1/projects", json={"name": "q"}, headers=keyed))
        return answers[-1].status_code

    await eventually(create, 201, within=1.0)
    assert "idempotent-replayed" not in answers[-1].headers
    again = await client.post("/v1/projects", json={"name": "q"}, headers=keyed)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == answers[-1].json()


async def test_a_fresh_key_adds_no_round_trip_claim_with_the_begin_save_with_the_commit(
    client: httpx.AsyncClient, headers: Headers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Besides BEGIN + pin and COMMIT (not sent through the session): a fresh key sends the
    claim in the BEGIN's round trip and the save in the COMMIT's, and nothing of its own; a
    replay adds the lookup (decisions 0028, 0030, 0031). Counted as the difference with the
    same create without a key, so the count does not depend on how many statements the
    create itself sends."""
    sent: list[str] = []
    begins: list[str | None] = []
    commits: list[str] = []
    execute, commit_sql = TenantSession.execute, TenantSession.commit_sql
    begin = TenantConnections._begin  # noqa: SLF001

    async def counted(self: TenantSession, statement: Any, parameters: Any = None) -> Any:
        sent.append(str(statement))
        return await execute(self, statement, parameters)

    async def begun(self: TenantConnections, *args: Any, **kwargs: Any) -> Any:
        begins.append(kwargs.get("first"))
        return await begin(self, *args, **kwargs)

    def committed(self: TenantSession) -> str:
        commits.append(commit_sql(self))
        return commits[-1]

    monkeypatch.setattr(TenantSession, "execute", counted)
    monkeypatch.setattr(TenantConnections, "_begin", begun)
    monkeypatch.setattr(TenantSession, "commit_sql", committed)

    async def statements(extra: Headers) -> tuple[list[str], str | None, str]:
        sent.clear()
        begins.clear()
        commits.clear()
        response = await client.post("/v1/projects", json={"name": "n"}, headers=extra)
        assert response.status_code == 201, response.text
        (first,) = begins
        (commit,) = commits
        return list(sent), first, commit

    plain, plain_first, plain_commit = await statements(headers)
    keyed = {**headers, "Idempotency-Key": "counted"}
    fresh, fresh_first, fresh_commit = await statements(keyed)
    replay, replay_first, replay_commit = await statements(keyed)
    assert plain_first is None and plain_commit == replay_commit == "COMMIT"
    assert fresh == plain
    assert fresh_first is not None and replay_first is not None
    for claim in (fresh_first, replay_first):
        assert "pg_try_advisory_xact_lock" in claim and "INSERT INTO idempotency_keys" in claim
    assert fresh_commit.endswith("; COMMIT") and "UPDATE idempotency_keys" in fresh_commit
    assert len(replay) == 1 and "FROM idempotency_keys" in replay[0]


async def test_a_save_that_fails_in_the_commit_round_trip_leaves_nothing(
    client: httpx.AsyncClient,
    headers: Headers,
    engine: AsyncEngine,
    tenant: TenantRecord,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The save goes in the COMMIT's round trip: when it fails there, the COMMIT never runs,
    so neither the project nor its key's record is kept, and the key stays free."""
    from app.db.repositories import idempotency as repository

    broken = repository.save_done_sql

    def failing(record: Any, *, purge: int) -> str:
        return broken(record, purge=purge).replace("UPDATE idempotency_keys", "UPDATE no_such")

    monkeypatch.setattr(repository, "save_done_sql", failing)
    before = await count_rows(engine, tenant, "projects")
    keyed = {**headers, "Idempotency-Key": "fails-at-commit"}
    failed = await client.post("/v1/projects", json={"name": "n"}, headers=keyed)
    assert failed.status_code == 500
    assert await count_rows(engine, tenant, "projects") == before
    assert await count_rows(engine, tenant, "idempotency_keys") == 0
    monkeypatch.setattr(repository, "save_done_sql", broken)
    retried = await client.post("/v1/projects", json={"name": "n"}, headers=keyed)
    assert retried.status_code == 201 and "idempotent-replayed" not in retried.headers


async def test_the_saved_response_keeps_every_byte_and_header(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    """The save's values travel inline (hex): quotes, backslashes and any Unicode in the
    body come back byte for byte in the replay."""
    name = "it's a \\ \"quoted\" name: 東京 ✓ '; DROP TABLE projects; --"
    keyed = {**headers, "Idempotency-Key": "bytes'\\key"}
    first = await client.post("/v1/projects", json={"name": name}, headers=keyed)
    assert first.status_code == 201, first.text
    replay = await client.post("/v1/projects", json={"name": name}, headers=keyed)
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.content == first.content and replay.json()["name"] == name
    for header in ("location", "etag", "content-type"):
        assert replay.headers[header] == first.headers[header]


async def test_task_creation_is_idempotent_and_a_failed_attempt_does_not_burn_the_key(
    client: httpx.AsyncClient, headers: Headers, engine: AsyncEngine, tenant: TenantRecord
) -> None:
    project = await post_project(client, headers)
    keyed = {**headers, "Idempotency-Key": "task-1"}
    url = f"/v1/projects/{project['id']}/tasks"
    invalid = await client.post(url, json={"title": ""}, headers=keyed)
    assert invalid.status_code == 422
    first = await client.post(url, json={"title": "t"}, headers=keyed)
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    again = await client.post(url, json={"title": "t"}, headers=keyed)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert again.headers["location"] == f"/v1/tasks/{first.json()['id']}"
    assert await count_rows(engine, tenant, "tasks") == 1


async def seed_keys(
    engine: AsyncEngine, tenant: TenantRecord, prefix: str, count: int, expiry: str
) -> str:
    """`count` finished records `<prefix>-<n>` expiring at now() `expiry`; the table's name."""
    table = f"{quote_ident(tenant.schema)}.idempotency_keys"
    async with engine.begin() as conn:
        await conn.execute(
            text(
                f"INSERT INTO {table} (key, request_hash, state, response_status, expires_at) "
                f"SELECT :prefix || '-' || i, 'h', 'done', 201, now() {expiry} "
                "FROM generate_series(1, :count) AS i"
            ),
            {"prefix": prefix, "count": count},
        )
    return table


async def test_each_new_key_clears_expired_records_so_the_table_stays_small(
    client: httpx.AsyncClient, headers: Headers, engine: AsyncEngine, tenant: TenantRecord
) -> None:
    """One new key's save in PURGE_EVERY deletes up to PURGE_BATCH expired records (any
    PURGE_EVERY saves in a row hold exactly one of them, whatever the process saved before)."""
    seeded = idempotency.PURGE_BATCH + 7
    table = await seed_keys(engine, tenant, "old", seeded, "- interval '1 hour'")
    for n in range(idempotency.PURGE_EVERY):
        live = {**headers, "Idempotency-Key": f"fresh-key-{n}"}
        created = await client.post("/v1/projects", json={"name": "n"}, headers=live)
        assert created.status_code == 201
    async with engine.connect() as conn:
        expired = await conn.scalar(text(f"SELECT count(*) FROM {table} WHERE expires_at < now()"))
        kept = await conn.scalar(text(f"SELECT count(*) FROM {table} WHERE key LIKE 'fresh-key-%'"))
    assert (expired, kept) == (7, idempotency.PURGE_EVERY)


async def test_the_purge_reads_the_expiry_index_not_the_whole_table(
    engine: AsyncEngine, tenant: TenantRecord
) -> None:
    """Thousands of live keys, none expired, and no statistics yet (a tenant's table that
    grew faster than autovacuum analyzes it, as in the benchmark): the purge of each save
    must not read them all (it did: a sequential scan, the planner guessing a third of the
    rows expired)."""
    await seed_keys(engine, tenant, "live", 5000, "+ interval '1 day'")
    async with engine.begin() as conn:
        await conn.execute(
            text("SELECT set_config('search_path', :schema, true)"), {"schema": tenant.schema}
        )
        # Forced generic: the plan a prepared statement settles on after five runs.
        await conn.execute(text("SET LOCAL plan_cache_mode = force_generic_plan"))
        sql = idempotency_repo.expired_keys_sql("$1", "$2")
        await conn.execute(text(f"PREPARE purge_plan AS {sql}"))
        plan = "\n".join(
            row[0]
            for row in await conn.execute(
                text("EXPLAIN (ANALYZE, BUFFERS) EXECUTE purge_plan('k', 10)")
            )
        )
        await conn.execute(text("DEALLOCATE purge_plan"))
    assert "Index Scan using ix_idempotency_keys_expires_at" in plan, plan
    assert "Seq Scan" not in plan, plan


@pytest.mark.parametrize(
    "value",
    [
        "plain",
        "it's",
        "back\\slash",
        "\\'",
        "'\\",
        "''; DROP TABLE projects; --",
        "$$ E'\\x00' $tag$",
        "tab\tnew\nline",
        "東京 ✓ \u202e",
        "\\\\\\'''",
    ],
)
async def test_inline_values_read_back_exactly(engine: AsyncEngine, value: str) -> None:
    """What rides with the COMMIT carries its values inline: each comes back as it was,
    under either setting of standard_conforming_strings."""
    from app.db.executor import sql_bytes, sql_text

    async with engine.connect() as conn:
        for conforming in ("on", "off"):
            await conn.exec_driver_sql(f"SET standard_conforming_strings = {conforming}")
            row = (
                await conn.exec_driver_sql(f"SELECT {sql_text(value)}, {sql_bytes(value.encode())}")
            ).one()
            assert (row[0], bytes(row[1])) == (value, value.encode()), conforming
        await conn.exec_driver_sql("RESET standard_conforming_strings")
    with pytest.raises(ValueError, match="NUL"):
        sql_text("a\x00b")
