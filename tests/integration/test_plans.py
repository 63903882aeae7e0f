"""Plans as data: the admin API's CRUD on plans, tenants on them, and a plan's change in
force on every replica within a second."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import MakeToken
from tests.support import assert_problem, eventually

Headers = dict[str, str]


def plan_name() -> str:
    return f"plan-{uuid.uuid4().hex[:10]}"


async def create_plan(client: httpx.AsyncClient, admin: Headers, **body: object) -> str:
    name = str(body.pop("name", plan_name()))
    response = await client.post("/admin/v1/plans", json={"name": name, **body}, headers=admin)
    assert response.status_code == 201, response.text
    return name


async def create_tenant(
    client: httpx.AsyncClient, admin: Headers, slug: str, **body: object
) -> httpx.Response:
    return await client.post(
        "/admin/v1/tenants", json={"slug": slug, "name": "Planned", **body}, headers=admin
    )


async def test_the_three_plans_of_before_are_seeded_with_the_server_defaults(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    response = await client.get("/admin/v1/plans", headers=admin)
    assert response.status_code == 200
    seeded = {plan["name"]: plan for plan in response.json()}
    for name in ("free", "pro", "enterprise"):
        limits = {key: value for key, value in seeded[name].items() if key not in _STAMPS}
        assert limits == {"name": name, **dict.fromkeys(_LIMITS)}


_STAMPS = ("created_at", "updated_at")
_LIMITS = (
    "rate_limit",
    "max_concurrent_transactions",
    "statement_timeout_ms",
    "max_projects",
    "max_tasks",
    "max_storage_bytes",
)


async def test_a_plan_is_created_read_listed_updated_and_deleted(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    name = plan_name()
    body = {
        "name": name,
        "rate_limit": "100/minute",
        "max_concurrent_transactions": 4,
        "statement_timeout_ms": 2000,
        "max_projects": 10,
        "max_tasks": 100,
        "max_storage_bytes": 10_000_000,
    }
    created = await client.post("/admin/v1/plans", json=body, headers=admin)
    assert created.status_code == 201, created.text
    assert created.headers["Location"] == f"/admin/v1/plans/{name}"
    assert {key: created.json()[key] for key in body} == body

    fetched = await client.get(f"/admin/v1/plans/{name}", headers=admin)
    assert fetched.json() == created.json()
    listed = await client.get("/admin/v1/plans", headers=admin)
    assert name in [plan["name"] for plan in listed.json()]

    patched = await client.patch(
        f"/admin/v1/plans/{name}", json={"max_projects": None, "max_tasks": 5}, headers=admin
    )
    assert patched.status_code == 200, patched.text
    assert (patched.json()["max_projects"], patched.json()["max_tasks"]) == (None, 5)
    assert patched.json()["rate_limit"] == "100/minute"  # left out: unchanged

    deleted = await client.delete(f"/admin/v1/plans/{name}", headers=admin)
    assert deleted.status_code == 204
    assert_problem(
        await client.get(f"/admin/v1/plans/{name}", headers=admin), 404, "plan_not_found"
    )
    assert_problem(
        await client.patch(f"/admin/v1/plans/{name}", json={}, headers=admin),
        404,
        "plan_not_found",
    )


async def test_a_second_plan_of_the_same_name_gets_409_plan_exists(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    name = await create_plan(client, admin)
    again = await client.post("/admin/v1/plans", json={"name": name}, headers=admin)
    assert_problem(again, 409, "plan_exists")


@pytest.mark.parametrize(
    "body",
    [
        {"name": "Free"},
        {"name": "a"},
        {"name": "has space"},
        {"name": "ok-name", "max_projects": -1},
        {"name": "ok-name", "max_concurrent_transactions": 0},
        {"name": "ok-name", "statement_timeout_ms": 0},
        {"name": "ok-name", "rate_limit": "lots"},
        {"name": "ok-name", "unknown": 1},
    ],
)
async def test_a_malformed_plan_gets_422(
    client: httpx.AsyncClient, admin: Headers, body: dict[str, object]
) -> None:
    response = await client.post("/admin/v1/plans", json=body, headers=admin)
    assert_problem(response, 422, "validation_error")


async def test_a_plan_in_use_cannot_be_deleted(
    client: httpx.AsyncClient, admin: Headers, unique_slug: Callable[[str], str]
) -> None:
    name = await create_plan(client, admin)
    slug = unique_slug("inuse")
    assert (await create_tenant(client, admin, slug, plan=name)).status_code == 201
    refused = await client.delete(f"/admin/v1/plans/{name}", headers=admin)
    assert_problem(refused, 409, "plan_in_use")
    await client.patch(f"/admin/v1/tenants/{slug}", json={"plan": "free"}, headers=admin)
    assert (await client.delete(f"/admin/v1/plans/{name}", headers=admin)).status_code == 204


async def test_a_tenant_naming_no_plan_gets_422_unknown_plan(
    client: httpx.AsyncClient, admin: Headers, unique_slug: Callable[[str], str]
) -> None:
    slug = unique_slug("noplan")
    assert_problem(
        await create_tenant(client, admin, slug, plan="no-such-plan"), 422, "unknown_plan"
    )
    assert (await client.get(f"/admin/v1/tenants/{slug}", headers=admin)).status_code == 404
    assert (await create_tenant(client, admin, slug)).status_code == 201
    patched = await client.patch(
        f"/admin/v1/tenants/{slug}", json={"plan": "no-such-plan"}, headers=admin
    )
    assert_problem(patched, 422, "unknown_plan")


async def test_a_tenant_gets_its_plans_rate_limit_unless_it_has_its_own(
    client: httpx.AsyncClient,
    admin: Headers,
    make_token: MakeToken,
    unique_slug: Callable[[str], str],
) -> None:
    name = await create_plan(client, admin, rate_limit="7/minute")
    planned, own = unique_slug("byplan"), unique_slug("byown")
    created = await create_tenant(client, admin, planned, plan=name)
    assert created.json()["rate_limit"] == "7/minute"
    await create_tenant(client, admin, own, plan=name, rate_limit="9/minute")
    for slug, expected in ((planned, "7/minute"), (own, "9/minute")):
        headers = {"Authorization": f"Bearer {make_token(tenant=slug)}"}
        response = await client.get("/v1/tenant", headers=headers)
        assert response.json()["rate_limit"] == expected
        assert response.headers["X-RateLimit-Limit"] == expected.split("/")[0]
        shown = await client.get(f"/admin/v1/tenants/{slug}", headers=admin)
        assert shown.json()["rate_limit"] == expected


async def test_a_plan_change_reaches_its_tenants_on_every_replica_within_1s(
    client: httpx.AsyncClient,
    second_client: httpx.AsyncClient,
    admin: Headers,
    make_token: MakeToken,
    unique_slug: Callable[[str], str],
) -> None:
    name = await create_plan(client, admin, rate_limit="50/minute")
    slug = unique_slug("live")
    await create_tenant(client, admin, slug, plan=name)
    headers = {"Authorization": f"Bearer {make_token(tenant=slug)}"}

    def limit_on(replica: httpx.AsyncClient) -> Callable[[], object]:
        async def probe() -> object:
            return (await replica.get("/v1/tenant", headers=headers)).json()["rate_limit"]

        return probe

    for replica in (client, second_client):  # both have the tenant in their registry
        assert await limit_on(replica)() == "50/minute"
    patched = await client.patch(
        f"/admin/v1/plans/{name}", json={"rate_limit": "60/minute"}, headers=admin
    )
    assert patched.status_code == 200
    for replica in (client, second_client):
        await eventually(limit_on(replica), "60/minute", within=1.0)
