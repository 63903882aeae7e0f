"""Tenant API: the audit trail is complete, ordered, and atomic with the change it records."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.repositories.tenants import TenantRecord
from app.db.tenancy import quote_ident
from tests.factories import post_project, post_task
from tests.support import assert_problem, count_rows

Headers = dict[str, str]
EVENT_FIELDS = {"id", "at", "actor", "action", "resource_type", "resource_id", "request_id"}


async def test_create_update_delete_are_audited_newest_first_with_request_ids(
    client: httpx.AsyncClient, tenant: TenantRecord, auth: Callable[..., Headers]
) -> None:
    headers = auth(tenant, sub="auditor-7")
    created = await client.post(
        "/v1/projects", json={"name": "p"}, headers={**headers, "X-Request-ID": "req-create"}
    )
    project_id = created.json()["id"]
    url = f"/v1/projects/{project_id}"
    await client.patch(url, json={"name": "q"}, headers={**headers, "X-Request-ID": "req-update"})
    task = await post_task(client, headers, project_id)
    await client.patch(f"/v1/tasks/{task['id']}", json={"status": "done"}, headers=headers)
    await client.delete(f"/v1/tasks/{task['id']}", headers=headers)
    await client.delete(url, headers={**headers, "X-Request-ID": "req-delete"})

    response = await client.get("/v1/audit-events", headers=headers)
    assert response.status_code == 200
    events = response.json()["items"]
    assert all(set(e) == EVENT_FIELDS for e in events)
    assert [(e["action"], e["resource_type"], e["resource_id"]) for e in events] == [
        ("project.deleted", "project", project_id),
        ("task.deleted", "task", task["id"]),
        ("task.updated", "task", task["id"]),
        ("task.created", "task", task["id"]),
        ("project.updated", "project", project_id),
        ("project.created", "project", project_id),
    ]
    assert {e["actor"] for e in events} == {"auditor-7"}
    by_action = {e["action"]: e for e in events}
    assert by_action["project.created"]["request_id"] == "req-create"
    assert by_action["project.updated"]["request_id"] == "req-update"
    assert by_action["project.deleted"]["request_id"] == "req-delete"
    assert by_action["task.created"]["request_id"]  # generated ids are recorded too
    assert [e["at"] for e in events] == sorted((e["at"] for e in events), reverse=True)


async def test_reads_and_refused_writes_are_not_audited(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    project = await post_project(client, headers)
    url = f"/v1/projects/{project['id']}"
    await client.get(url, headers=headers)
    await client.patch(url, json={"name": ""}, headers=headers)
    await client.patch(url, json={"name": "x"}, headers={**headers, "If-Match": '"nope"'})
    events = (await client.get("/v1/audit-events", headers=headers)).json()["items"]
    assert [e["action"] for e in events] == ["project.created"]


async def test_audit_events_page_with_a_cursor(client: httpx.AsyncClient, headers: Headers) -> None:
    ids = [(await post_project(client, headers))["id"] for _ in range(5)]
    seen: list[str] = []
    params: dict[str, object] = {"limit": 2}
    while True:
        page = (await client.get("/v1/audit-events", params=params, headers=headers)).json()
        seen += [e["resource_id"] for e in page["items"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == ids[::-1]


async def test_audit_trails_are_per_tenant(
    client: httpx.AsyncClient,
    headers: Headers,
    other_tenant: TenantRecord,
    auth: Callable[..., Headers],
) -> None:
    await post_project(client, auth(other_tenant))
    assert (await client.get("/v1/audit-events", headers=headers)).json()["items"] == []


async def test_a_write_whose_audit_event_fails_leaves_neither_row_nor_event(
    client: httpx.AsyncClient,
    headers: Headers,
    engine: AsyncEngine,
    tenant: TenantRecord,
) -> None:
    # Make the event insert fail after the project insert succeeded, in the same transaction.
    async with engine.begin() as conn:
        await conn.execute(
            text(
                f"ALTER TABLE {quote_ident(tenant.schema)}.audit_events "
                "ADD CONSTRAINT no_project_created CHECK (action <> 'project.created')"
            )
        )
    response = await client.post("/v1/projects", json={"name": "doomed"}, headers=headers)
    body = assert_problem(response, 500, "internal_error")
    for leak in ("no_project_created", "audit_events", tenant.schema, "INSERT", "Traceback"):
        assert leak not in response.text
    assert body["request_id"] == response.headers["x-request-id"]
    assert await count_rows(engine, tenant, "projects") == 0
    assert await count_rows(engine, tenant, "audit_events") == 0
    # The key of an idempotent attempt that failed is not burnt either.
    keyed = {**headers, "Idempotency-Key": "k-doomed"}
    assert (await client.post("/v1/projects", json={"name": "d"}, headers=keyed)).status_code == 500
    assert await count_rows(engine, tenant, "idempotency_keys") == 0
