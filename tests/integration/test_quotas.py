"""Quotas of a tenant's plan: a create past one answers 403 quota_exceeded with the quota,
its limit and the usage; concurrent creates at the edge never overshoot."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.repositories.tenants import TenantRecord
from app.services import usage
from app.services.tenants import get_tenant
from tests.conftest import MakeToken
from tests.factories import ProjectFactory, TaskFactory, post_project
from tests.integration.test_plans import create_plan, create_tenant
from tests.support import assert_problem, count_rows, eventually

Headers = dict[str, str]


async def tenant_on_plan(
    client: httpx.AsyncClient,
    admin: Headers,
    make_token: MakeToken,
    unique_slug: Callable[[str], str],
    **quotas: object,
) -> tuple[str, str, Headers]:
    """A new plan with `quotas` and a new tenant on it: (plan, slug, the tenant's headers)."""
    plan = await create_plan(client, admin, **quotas)
    slug = unique_slug("quota")
    assert (await create_tenant(client, admin, slug, plan=plan)).status_code == 201
    return plan, slug, {"Authorization": f"Bearer {make_token(tenant=slug)}"}


async def post(client: httpx.AsyncClient, headers: Headers, url: str, body: object) -> int:
    return (await client.post(url, json=body, headers=headers)).status_code


async def test_the_project_past_the_quota_gets_403_with_quota_limit_and_usage(
    client: httpx.AsyncClient,
    admin: Headers,
    make_token: MakeToken,
    unique_slug: Callable[[str], str],
) -> None:
    _, _, headers = await tenant_on_plan(client, admin, make_token, unique_slug, max_projects=2)
    first = await post_project(client, headers)
    await post_project(client, headers)
    refused = await client.post("/v1/projects", json=ProjectFactory(), headers=headers)
    body = assert_problem(refused, 403, "quota_exceeded")
    assert (body["quota"], body["limit"], body["usage"]) == ("max_projects", 2, 2)
    # Nothing was written: no project, no audit event beyond the two creates.
    events = (await client.get("/v1/audit-events", headers=headers)).json()["items"]
    assert [event["action"] for event in events] == ["project.created"] * 2
    # A delete makes room again.
    deleted = await client.delete(f"/v1/projects/{first['id']}", headers=headers)
    assert deleted.status_code == 204
    assert await post(client, headers, "/v1/projects", ProjectFactory()) == 201


async def test_tasks_are_counted_across_the_tenants_projects(
    client: httpx.AsyncClient,
    admin: Headers,
    make_token: MakeToken,
    unique_slug: Callable[[str], str],
) -> None:
    _, _, headers = await tenant_on_plan(client, admin, make_token, unique_slug, max_tasks=3)
    one, two = await post_project(client, headers), await post_project(client, headers)
    for project, expected in ((one, 201), (one, 201), (two, 201), (two, 403), (one, 403)):
        url = f"/v1/projects/{project['id']}/tasks"
        assert await post(client, headers, url, TaskFactory()) == expected
    refused = await client.post(
        f"/v1/projects/{two['id']}/tasks", json=TaskFactory(), headers=headers
    )
    body = assert_problem(refused, 403, "quota_exceeded")
    assert (body["quota"], body["limit"], body["usage"]) == ("max_tasks", 3, 3)
    # A project that does not exist is still 404, quota or not.
    missing = await client.post(
        f"/v1/projects/{uuid.uuid4()}/tasks", json=TaskFactory(), headers=headers
    )
    assert_problem(missing, 404, "project_not_found")


async def test_concurrent_creates_at_the_edge_never_overshoot(
    client: httpx.AsyncClient,
    admin: Headers,
    make_token: MakeToken,
    unique_slug: Callable[[str], str],
    engine: AsyncEngine,
) -> None:
    _, slug, headers = await tenant_on_plan(
        client, admin, make_token, unique_slug, max_projects=5, max_tasks=4
    )
    project = await post_project(client, headers)
    await post_project(client, headers)
    projects = await asyncio.gather(
        *(post(client, headers, "/v1/projects", ProjectFactory()) for _ in range(12))
    )
    assert sorted(projects) == [201] * 3 + [403] * 9
    tasks_url = f"/v1/projects/{project['id']}/tasks"
    tasks = await asyncio.gather(
        *(post(client, headers, tasks_url, TaskFactory()) for _ in range(12))
    )
    assert sorted(tasks) == [201] * 4 + [403] * 8
    record: TenantRecord = await get_tenant(engine, slug)
    assert await count_rows(engine, record, "projects") == 5
    assert await count_rows(engine, record, "tasks") == 4


async def test_a_quota_raised_on_the_plan_lets_creates_through_within_1s(
    client: httpx.AsyncClient,
    second_client: httpx.AsyncClient,
    admin: Headers,
    make_token: MakeToken,
    unique_slug: Callable[[str], str],
) -> None:
    plan, _, headers = await tenant_on_plan(client, admin, make_token, unique_slug, max_projects=0)
    for replica in (client, second_client):
        assert await post(replica, headers, "/v1/projects", ProjectFactory()) == 403
    patched = await client.patch(
        f"/admin/v1/plans/{plan}", json={"max_projects": None}, headers=admin
    )
    assert patched.status_code == 200
    for replica in (client, second_client):

        async def create(replica: httpx.AsyncClient = replica) -> int:
            return await post(replica, headers, "/v1/projects", ProjectFactory())

        await eventually(create, 201, within=1.0)


async def test_past_the_storage_quota_as_last_measured_creates_get_403_on_every_replica(
    client: httpx.AsyncClient,
    second_client: httpx.AsyncClient,
    admin: Headers,
    make_token: MakeToken,
    unique_slug: Callable[[str], str],
    engine: AsyncEngine,
) -> None:
    plan, slug, headers = await tenant_on_plan(
        client, admin, make_token, unique_slug, max_storage_bytes=100_000
    )
    project = await post_project(client, headers)  # not measured yet: nothing to refuse
    for replica in (client, second_client):  # both have the tenant, unmeasured, in memory
        assert (await replica.get("/v1/tenant", headers=headers)).status_code == 200
    await usage.refresh(engine, [slug])  # an empty schema's tables and indexes: > 100 kB
    measured = (await client.get(f"/admin/v1/tenants/{slug}/usage", headers=admin)).json()
    assert measured["storage_bytes"] > 100_000
    tasks_url = f"/v1/projects/{project['id']}/tasks"
    for replica in (client, second_client):

        async def refused(replica: httpx.AsyncClient = replica) -> int:
            return await post(replica, headers, tasks_url, TaskFactory())

        await eventually(refused, 403, within=1.0)
    response = await client.post("/v1/projects", json=ProjectFactory(), headers=headers)
    body = assert_problem(response, 403, "quota_exceeded")
    assert (body["quota"], body["limit"], body["usage"]) == (
        "max_storage_bytes",
        100_000,
        measured["storage_bytes"],
    )
    # Reads, updates and deletes go on: only creates count against a quota.
    assert (await client.get(f"/v1/projects/{project['id']}", headers=headers)).status_code == 200
    await client.patch(f"/admin/v1/plans/{plan}", json={"max_storage_bytes": None}, headers=admin)
    await eventually(
        lambda: post(client, headers, "/v1/projects", ProjectFactory()), 201, within=1.0
    )
