"""Tenant API: projects, the caller's tenant, ETags and pagination, over HTTP."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.repositories.tenants import TenantRecord
from app.services.pagination import CURSOR_PATTERN
from tests.factories import post_project, post_task
from tests.support import assert_problem, count_rows

Headers = dict[str, str]


async def test_get_tenant_describes_the_callers_tenant(
    client: httpx.AsyncClient, tenant: TenantRecord, headers: Headers
) -> None:
    response = await client.get("/v1/tenant", headers=headers)
    assert response.status_code == 200
    assert response.headers["x-ratelimit-limit"] == "600"
    assert response.json() == {
        "slug": tenant.slug,
        "name": tenant.name,
        "plan": tenant.plan,
        "status": "active",
        "rate_limit": "600/minute",
    }


async def test_create_answers_201_with_location_etag_and_the_project(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    response = await client.post(
        "/v1/projects", json={"name": "Apollo", "description": "moon"}, headers=headers
    )
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"id", "name", "description", "created_at", "updated_at", "version"}
    assert (body["name"], body["description"], body["version"]) == ("Apollo", "moon", 1)
    assert response.headers["location"] == f"/v1/projects/{body['id']}"
    assert response.headers["etag"] == f'"{body["id"]}-1"'
    fetched = await client.get(response.headers["location"], headers=headers)
    assert fetched.json() == body
    assert fetched.headers["etag"] == response.headers["etag"]


async def test_patch_changes_only_the_fields_sent_and_bumps_the_version(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    project = await post_project(client, headers, name="old", description="keep me")
    response = await client.patch(
        f"/v1/projects/{project['id']}", json={"name": "new"}, headers=headers
    )
    assert response.status_code == 200
    body = response.json()
    assert (body["name"], body["description"], body["version"]) == ("new", "keep me", 2)
    assert response.headers["etag"] == f'"{project["id"]}-2"'
    assert body["updated_at"] > project["updated_at"]
    assert body["created_at"] == project["created_at"]
    cleared = await client.patch(
        f"/v1/projects/{project['id']}", json={"description": None}, headers=headers
    )
    assert cleared.json()["description"] is None
    assert cleared.json()["version"] == 3


async def test_patch_refuses_null_name_and_unknown_fields(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    project = await post_project(client, headers)
    url = f"/v1/projects/{project['id']}"
    body = assert_problem(
        await client.patch(url, json={"name": None}, headers=headers), 422, "validation_error"
    )
    assert body["errors"][0]["loc"] == ["body", "name"]  # type: ignore[index]
    assert_problem(
        await client.patch(url, json={"color": "red"}, headers=headers), 422, "validation_error"
    )
    assert (await client.get(url, headers=headers)).json()["version"] == 1


async def test_empty_patch_changes_nothing(client: httpx.AsyncClient, headers: Headers) -> None:
    project = await post_project(client, headers)
    response = await client.patch(f"/v1/projects/{project['id']}", json={}, headers=headers)
    assert response.status_code == 200
    assert response.json() == project


async def test_delete_removes_the_project_and_its_tasks(
    client: httpx.AsyncClient, headers: Headers, engine: AsyncEngine, tenant: TenantRecord
) -> None:
    project = await post_project(client, headers)
    task = await post_task(client, headers, project["id"])
    response = await client.delete(f"/v1/projects/{project['id']}", headers=headers)
    assert response.status_code == 204
    assert response.content == b""
    assert_problem(
        await client.get(f"/v1/projects/{project['id']}", headers=headers),
        404,
        "project_not_found",
    )
    assert_problem(
        await client.get(f"/v1/tasks/{task['id']}", headers=headers), 404, "task_not_found"
    )
    assert await count_rows(engine, tenant, "tasks") == 0


async def test_absent_id_and_another_tenants_id_answer_the_same_404(
    client: httpx.AsyncClient,
    headers: Headers,
    other_tenant: TenantRecord,
    auth: Callable[..., Headers],
) -> None:
    theirs = await post_project(client, auth(other_tenant))
    absent = str(uuid.uuid4())
    for method, json in (("GET", None), ("PATCH", {"name": "x"}), ("DELETE", None)):
        bodies = []
        for project_id in (theirs["id"], absent):
            response = await client.request(
                method, f"/v1/projects/{project_id}", json=json, headers=headers
            )
            body = assert_problem(response, 404, "project_not_found")
            body.pop("request_id")
            bodies.append(body)
        assert bodies[0] == bodies[1], method
    # ...and the other tenant's project is untouched.
    mine = await client.get(f"/v1/projects/{theirs['id']}", headers=auth(other_tenant))
    assert mine.json() == theirs


async def test_malformed_id_answers_422(client: httpx.AsyncClient, headers: Headers) -> None:
    for method in ("GET", "PATCH", "DELETE"):
        response = await client.request(
            method, "/v1/projects/not-a-uuid", json={"name": "x"}, headers=headers
        )
        body = assert_problem(response, 422, "validation_error")
        assert body["errors"][0]["loc"] == ["path", "project_id"]  # type: ignore[index]


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"name": ""},
        {"name": "x" * 201},
        {"name": "ok", "description": "d" * 10_001},
        {"name": 42},
        {"name": "ok", "owner": "me"},
        {"name": "nul\x00byte"},
        {"name": "ok", "description": "nul\x00"},
    ],
)
async def test_invalid_project_bodies_answer_422(
    client: httpx.AsyncClient, headers: Headers, payload: dict[str, object]
) -> None:
    response = await client.post("/v1/projects", json=payload, headers=headers)
    assert_problem(response, 422, "validation_error")


async def test_limits_are_inclusive(client: httpx.AsyncClient, headers: Headers) -> None:
    project = await post_project(client, headers, name="x" * 200, description="d" * 10_000)
    assert len(project["name"]) == 200


async def test_bodies_that_are_not_json_objects_never_fail_with_5xx(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    raw = [b"{", b"[]", b"null", b'"name"', b'{"name": "\\ud800"}', b'{"name": "a\\u0000"}']
    for content in raw:
        response = await client.post(
            "/v1/projects",
            content=content,
            headers={**headers, "Content-Type": "application/json"},
        )
        assert response.status_code in (400, 422), (content, response.text)
        assert response.headers["content-type"] == "application/problem+json"


async def test_wrong_methods_answer_405(client: httpx.AsyncClient, headers: Headers) -> None:
    project_id = str(uuid.uuid4())
    for method, url in (
        ("PUT", f"/v1/projects/{project_id}"),
        ("POST", f"/v1/projects/{project_id}"),
        ("DELETE", "/v1/projects"),
        ("PATCH", "/v1/projects"),
        ("POST", "/v1/tenant"),
        ("POST", "/v1/audit-events"),
    ):
        response = await client.request(method, url, headers=headers)
        assert_problem(response, 405, "method_not_allowed")


async def test_list_is_newest_first_and_pages_with_a_cursor(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    created = [(await post_project(client, headers))["id"] for _ in range(5)]
    first = (await client.get("/v1/projects?limit=2", headers=headers)).json()
    assert [p["id"] for p in first["items"]] == created[::-1][:2]
    seen = [p["id"] for p in first["items"]]
    cursor = first["next_cursor"]
    while cursor:
        page = (
            await client.get("/v1/projects", params={"limit": 2, "cursor": cursor}, headers=headers)
        ).json()
        seen += [p["id"] for p in page["items"]]
        cursor = page["next_cursor"]
    assert seen == created[::-1]


async def test_every_cursor_of_the_documented_form_is_a_position(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    """The document gives the cursor's pattern; a cursor of that form is never refused, issued
    or not: it answers the rows after the moment and id it names."""
    created = [(await post_project(client, headers))["id"] for _ in range(3)]
    first = (await client.get("/v1/projects?limit=1", headers=headers)).json()
    assert re.fullmatch(CURSOR_PATTERN, first["next_cursor"])
    future = f"{10**16 - 1}-{'f' * 32}"  # the year 2286: every row lies before it
    past = f"0-{'0' * 32}"  # 1970: no row lies before it
    for cursor, expected in ((future, created[::-1]), (past, []), ("", created[::-1])):
        page = await client.get("/v1/projects", params={"cursor": cursor}, headers=headers)
        assert page.status_code == 200, page.text
        assert [p["id"] for p in page.json()["items"]] == expected


async def test_pagination_is_stable_under_concurrent_inserts(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    # More rows than one page of the default size, created concurrently.
    originals = await asyncio.gather(*(post_project(client, headers) for _ in range(25)))
    original_ids = {p["id"] for p in originals}
    first = (await client.get("/v1/projects", headers=headers)).json()
    assert len(first["items"]) == 20 and first["next_cursor"]
    seen = [p["id"] for p in first["items"]]
    # Inserts between pages must neither repeat a row nor push an older one out of reach.
    newer = {(await post_project(client, headers))["id"] for _ in range(7)}
    cursor = first["next_cursor"]
    while cursor:
        page = (await client.get("/v1/projects", params={"cursor": cursor}, headers=headers)).json()
        seen += [p["id"] for p in page["items"]]
        cursor = page["next_cursor"]
    assert len(seen) == len(set(seen)), "a row appeared twice"
    assert set(seen) == original_ids
    assert not newer & set(seen)


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=101",
        "limit=abc",
        "cursor=bm9wZQ",
        "cursor=%00",
        "cursor=" + "a" * 513,
        # a well-formed cursor whose moment lies before year 1 in UTC
        "cursor=WyIwMDAxLTAxLTAxVDAwOjAwOjAwKzE0OjAwIiwgIjAwMDAwMDAwLTAwMDAtMDAwMC0wMDAwLTAwMDAwMDAwMDAwMCJd",
    ],
)
async def test_bad_page_parameters_answer_422(
    client: httpx.AsyncClient, headers: Headers, query: str
) -> None:
    response = await client.get(f"/v1/projects?{query}", headers=headers)
    assert response.status_code == 422, response.text
    assert response.json()["code"] in ("validation_error", "invalid_cursor")


async def test_if_none_match_with_the_current_etag_answers_304(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    project = await post_project(client, headers)
    url = f"/v1/projects/{project['id']}"
    etag = (await client.get(url, headers=headers)).headers["etag"]
    unchanged = await client.get(url, headers={**headers, "If-None-Match": etag})
    assert unchanged.status_code == 304
    assert unchanged.content == b""
    assert unchanged.headers["etag"] == etag
    weak = await client.get(url, headers={**headers, "If-None-Match": f'"other", W/{etag}'})
    assert weak.status_code == 304
    await client.patch(url, json={"name": "changed"}, headers=headers)
    changed = await client.get(url, headers={**headers, "If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.json()["name"] == "changed"


async def test_two_clients_with_the_same_etag_the_second_patch_gets_412(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    project = await post_project(client, headers)
    url = f"/v1/projects/{project['id']}"
    etag = (await client.get(url, headers=headers)).headers["etag"]
    first, second = await asyncio.gather(
        client.patch(url, json={"name": "one"}, headers={**headers, "If-Match": etag}),
        client.patch(url, json={"name": "two"}, headers={**headers, "If-Match": etag}),
    )
    statuses = sorted([first.status_code, second.status_code])
    assert statuses == [200, 412], (first.text, second.text)
    loser = first if first.status_code == 412 else second
    assert_problem(loser, 412, "precondition_failed")
    winner = first if first.status_code == 200 else second
    current = (await client.get(url, headers=headers)).json()
    assert current["version"] == 2
    assert current["name"] == winner.json()["name"]


async def test_if_match_on_delete_must_name_the_current_version(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    project = await post_project(client, headers)
    url = f"/v1/projects/{project['id']}"
    stale = f'"{project["id"]}-1"'
    await client.patch(url, json={"name": "v2"}, headers=headers)
    for tag in (stale, f'W/"{project["id"]}-2"', f'"{uuid.uuid4()}-2"', "garbage"):
        assert_problem(
            await client.delete(url, headers={**headers, "If-Match": tag}),
            412,
            "precondition_failed",
        )
    ok = await client.delete(url, headers={**headers, "If-Match": f'"{project["id"]}-2"'})
    assert ok.status_code == 204


async def test_read_scope_reads_but_cannot_write(
    client: httpx.AsyncClient, tenant: TenantRecord, auth: Callable[..., Headers]
) -> None:
    reader = auth(tenant, scopes="api:read")
    assert (await client.get("/v1/projects", headers=reader)).status_code == 200
    response = await client.post("/v1/projects", json={"name": "x"}, headers=reader)
    assert_problem(response, 403, "insufficient_scope")
