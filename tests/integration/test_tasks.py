"""Tenant API: tasks, their filters, limits and ETags, over HTTP."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from app.db.repositories.tenants import TenantRecord
from tests.factories import TaskFactory, post_project, post_task
from tests.support import assert_problem

Headers = dict[str, str]

TASK_FIELDS = {
    "id",
    "project_id",
    "title",
    "description",
    "status",
    "priority",
    "assignee",
    "labels",
    "due_date",
    "created_by",
    "created_at",
    "updated_at",
    "version",
}


@pytest.fixture
async def project(client: httpx.AsyncClient, headers: Headers) -> dict[str, Any]:
    return await post_project(client, headers)


async def test_create_with_only_a_title_takes_the_defaults_and_the_tokens_subject(
    client: httpx.AsyncClient, tenant: TenantRecord, auth: Callable[..., Headers]
) -> None:
    headers = auth(tenant, sub="carol")
    project = await post_project(client, headers)
    response = await client.post(
        f"/v1/projects/{project['id']}/tasks", json={"title": "Write"}, headers=headers
    )
    assert response.status_code == 201
    task = response.json()
    assert set(task) == TASK_FIELDS
    assert task["project_id"] == project["id"]
    assert (task["status"], task["priority"], task["labels"]) == ("todo", "medium", [])
    assert (task["assignee"], task["due_date"], task["description"]) == (None, None, None)
    assert task["created_by"] == "carol"
    assert task["version"] == 1
    assert response.headers["location"] == f"/v1/tasks/{task['id']}"
    assert response.headers["etag"] == f'"{task["id"]}-1"'


async def test_create_in_an_absent_project_answers_404(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    response = await client.post(
        f"/v1/projects/{uuid.uuid4()}/tasks", json={"title": "x"}, headers=headers
    )
    assert_problem(response, 404, "project_not_found")


async def test_full_task_round_trip(
    client: httpx.AsyncClient, headers: Headers, project: dict[str, Any]
) -> None:
    payload = TaskFactory(labels=["a", "b"], due_date="2031-12-31", assignee="bob")
    created = (
        await client.post(f"/v1/projects/{project['id']}/tasks", json=payload, headers=headers)
    ).json()
    for key, value in payload.items():
        assert created[key] == value, key
    url = f"/v1/tasks/{created['id']}"
    fetched = await client.get(url, headers=headers)
    assert fetched.json() == created
    patched = await client.patch(
        url,
        json={"status": "done", "assignee": None, "labels": ["c"], "due_date": None},
        headers={**headers, "If-Match": fetched.headers["etag"]},
    )
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert (body["status"], body["assignee"], body["labels"], body["due_date"]) == (
        "done",
        None,
        ["c"],
        None,
    )
    assert (body["title"], body["priority"], body["version"]) == (
        created["title"],
        created["priority"],
        2,
    )
    assert patched.headers["etag"] == f'"{created["id"]}-2"'
    assert (await client.delete(url, headers=headers)).status_code == 204
    assert_problem(await client.get(url, headers=headers), 404, "task_not_found")
    assert_problem(await client.delete(url, headers=headers), 404, "task_not_found")


async def test_duplicate_labels_are_dropped_keeping_the_first_order(
    client: httpx.AsyncClient, headers: Headers, project: dict[str, Any]
) -> None:
    task = await post_task(client, headers, project["id"], labels=["b", "a", "b", "a"])
    assert task["labels"] == ["b", "a"]


async def test_list_filters_by_status_assignee_and_label(
    client: httpx.AsyncClient, headers: Headers, project: dict[str, Any]
) -> None:
    specs = [
        ("todo", "alice", ["bug"]),
        ("todo", "bob", ["bug", "ui"]),
        ("done", "alice", ["ui"]),
        ("in_progress", None, []),
    ]
    ids = [
        (await post_task(client, headers, project["id"], status=s, assignee=a, labels=lab))["id"]
        for s, a, lab in specs
    ]
    other_project = await post_project(client, headers)
    await post_task(client, headers, other_project["id"], status="todo", assignee="alice")

    async def listed(**params: Any) -> list[str]:
        response = await client.get(
            f"/v1/projects/{project['id']}/tasks", params=params, headers=headers
        )
        assert response.status_code == 200, response.text
        return [t["id"] for t in response.json()["items"]]

    assert await listed() == ids[::-1]
    assert await listed(status="todo") == [ids[1], ids[0]]
    assert await listed(assignee="alice") == [ids[2], ids[0]]
    assert await listed(label="ui") == [ids[2], ids[1]]
    assert await listed(status="todo", label="ui", assignee="bob") == [ids[1]]
    assert await listed(label="nope") == []
    page = await listed(limit=3)
    assert page == ids[::-1][:3]


async def test_task_pages_follow_the_cursor_with_filters(
    client: httpx.AsyncClient, headers: Headers, project: dict[str, Any]
) -> None:
    ids = [(await post_task(client, headers, project["id"], status="todo"))["id"] for _ in range(5)]
    await post_task(client, headers, project["id"], status="done")
    seen: list[str] = []
    params: dict[str, Any] = {"status": "todo", "limit": 2}
    while True:
        page = (
            await client.get(f"/v1/projects/{project['id']}/tasks", params=params, headers=headers)
        ).json()
        seen += [t["id"] for t in page["items"]]
        if not page["next_cursor"]:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == ids[::-1]


async def test_listing_tasks_of_an_absent_project_answers_404(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    response = await client.get(f"/v1/projects/{uuid.uuid4()}/tasks", headers=headers)
    assert_problem(response, 404, "project_not_found")


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"title": ""},
        {"title": "x" * 501},
        {"title": "t", "description": "d" * 10_001},
        {"title": "t", "status": "blocked"},
        {"title": "t", "priority": "urgent"},
        {"title": "t", "assignee": ""},
        {"title": "t", "assignee": "a" * 201},
        {"title": "t", "labels": [f"l{i}" for i in range(21)]},
        {"title": "t", "labels": ["x" * 51]},
        {"title": "t", "labels": [""]},
        {"title": "t", "labels": "bug"},
        {"title": "t", "labels": None},
        {"title": "t", "due_date": "2025-02-30"},
        {"title": "t", "due_date": "tomorrow"},
        {"title": "t", "unknown": 1},
        {"title": "t\x00"},
        {"title": "t", "labels": ["a\x00"]},
    ],
)
async def test_invalid_task_bodies_answer_422(
    client: httpx.AsyncClient, headers: Headers, project: dict[str, Any], payload: dict[str, Any]
) -> None:
    response = await client.post(
        f"/v1/projects/{project['id']}/tasks", json=payload, headers=headers
    )
    assert_problem(response, 422, "validation_error")


async def test_twenty_labels_are_accepted(
    client: httpx.AsyncClient, headers: Headers, project: dict[str, Any]
) -> None:
    labels = [f"l{i}" for i in range(20)]
    assert (await post_task(client, headers, project["id"], labels=labels))["labels"] == labels


@pytest.mark.parametrize(
    "payload",
    [
        {"title": None},
        {"status": None},
        {"priority": None},
        {"labels": None},
        {"status": "blocked"},
        {"due_date": "2025-02-30"},
        {"project_id": str(uuid.uuid4())},
        {"version": 9},
    ],
)
async def test_invalid_task_patches_answer_422_and_change_nothing(
    client: httpx.AsyncClient, headers: Headers, project: dict[str, Any], payload: dict[str, Any]
) -> None:
    task = await post_task(client, headers, project["id"])
    url = f"/v1/tasks/{task['id']}"
    assert_problem(await client.patch(url, json=payload, headers=headers), 422, "validation_error")
    assert (await client.get(url, headers=headers)).json() == task


@pytest.mark.parametrize(
    "query",
    ["status=blocked", "label=", "label=" + "x" * 51, "assignee=", "limit=0", "label=a%00b"],
)
async def test_invalid_task_filters_answer_422(
    client: httpx.AsyncClient, headers: Headers, project: dict[str, Any], query: str
) -> None:
    response = await client.get(f"/v1/projects/{project['id']}/tasks?{query}", headers=headers)
    assert_problem(response, 422, "validation_error")


async def test_another_tenants_task_answers_the_same_404_as_an_absent_one(
    client: httpx.AsyncClient,
    headers: Headers,
    other_tenant: TenantRecord,
    auth: Callable[..., Headers],
) -> None:
    theirs_headers = auth(other_tenant)
    their_project = await post_project(client, theirs_headers)
    their_task = await post_task(client, theirs_headers, their_project["id"])
    for method, json in (("GET", None), ("PATCH", {"title": "x"}), ("DELETE", None)):
        bodies = []
        for task_id in (their_task["id"], str(uuid.uuid4())):
            body = assert_problem(
                await client.request(method, f"/v1/tasks/{task_id}", json=json, headers=headers),
                404,
                "task_not_found",
            )
            body.pop("request_id")
            bodies.append(body)
        assert bodies[0] == bodies[1], method
    # Creating in, or listing, another tenant's project is a 404 too.
    assert_problem(
        await client.post(
            f"/v1/projects/{their_project['id']}/tasks", json={"title": "x"}, headers=headers
        ),
        404,
        "project_not_found",
    )
    assert_problem(
        await client.get(f"/v1/projects/{their_project['id']}/tasks", headers=headers),
        404,
        "project_not_found",
    )
    unchanged = await client.get(f"/v1/tasks/{their_task['id']}", headers=theirs_headers)
    assert unchanged.json() == their_task


async def test_task_etags_and_preconditions(
    client: httpx.AsyncClient, headers: Headers, project: dict[str, Any]
) -> None:
    task = await post_task(client, headers, project["id"])
    url = f"/v1/tasks/{task['id']}"
    etag = f'"{task["id"]}-1"'
    assert (await client.get(url, headers={**headers, "If-None-Match": etag})).status_code == 304
    ok = await client.patch(url, json={"title": "v2"}, headers={**headers, "If-Match": etag})
    assert ok.status_code == 200
    stale = await client.patch(url, json={"title": "v3"}, headers={**headers, "If-Match": etag})
    assert_problem(stale, 412, "precondition_failed")
    assert_problem(
        await client.delete(url, headers={**headers, "If-Match": etag}), 412, "precondition_failed"
    )
    assert (await client.get(url, headers=headers)).json()["title"] == "v2"
