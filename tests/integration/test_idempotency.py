"""Idempotency-Key on creating POSTs: replay, mismatch, concurrency, expiry, per tenant."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.repositories.tenants import TenantRecord
from app.db.tenancy import quote_ident
from tests.factories import post_project
from tests.support import assert_problem, count_rows

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


async def test_each_new_key_clears_expired_records_so_the_table_stays_small(
    client: httpx.AsyncClient, headers: Headers, engine: AsyncEngine, tenant: TenantRecord
) -> None:
    table = f"{quote_ident(tenant.schema)}.idempotency_keys"
    async with engine.begin() as conn:
        await conn.execute(
            text(
                f"INSERT INTO {table} (key, request_hash, state, response_status, expires_at) "
                "SELECT 'old-' || i, 'h', 'done', 201, now() - interval '1 hour' "
                "FROM generate_series(1, 15) AS i"
            )
        )
    live = {**headers, "Idempotency-Key": "fresh-key"}
    assert (await client.post("/v1/projects", json={"name": "n"}, headers=live)).status_code == 201
    async with engine.connect() as conn:
        expired = await conn.scalar(text(f"SELECT count(*) FROM {table} WHERE expires_at < now()"))
        kept = await conn.scalar(text(f"SELECT count(*) FROM {table} WHERE key = 'fresh-key'"))
    assert (expired, kept) == (5, 1)
