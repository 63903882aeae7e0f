"""Declared writes answered before routing (app/api/writes_first.py): the same answers as the
route gives, the route still answering whatever the early path does not take, and a write
that fails at any point (its statement, its COMMIT) answering no 2xx, leaving neither the
row nor its event, and invalidating nothing.

Each behaviour is checked on both paths: a plain JSON body takes the early path; a
`+json` media type (which FastAPI parses as JSON too) goes through FastAPI's routing.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from app.api.admission import get_admission
from app.core.errors import TesseraError
from app.db.repositories.tenants import TenantRecord
from app.db.tenancy import quote_ident
from app.services.cache_entries import CacheKey
from tests.factories import post_project
from tests.support import add_trigger, assert_problem, count_rows

Headers = dict[str, str]
EARLY = "application/json"
ROUTED = "application/vnd.tessera+json"  # parsed as JSON by FastAPI, left to it by the early path
PATHS = pytest.mark.parametrize("media_type", [EARLY, ROUTED], ids=["early", "routed"])


class RefusedByTheRoute(TesseraError):
    status = 418
    code = "route_dependency_ran"


async def _refuse() -> None:
    raise RefusedByTheRoute("the route's dependency answered")


@pytest.fixture
def route_marked(app: FastAPI) -> Iterator[None]:
    """The route's admission dependency replaced by one that answers 418: a request that
    reaches FastAPI's routing says so; the early path does not use it."""
    app.dependency_overrides[get_admission] = _refuse
    yield
    app.dependency_overrides.pop(get_admission, None)


def _with(headers: Headers, media_type: str, **extra: str) -> Headers:
    return {**headers, "Content-Type": media_type, **extra}


async def test_a_valid_write_is_answered_before_routing_and_others_by_the_route(
    client: httpx.AsyncClient, headers: Headers, route_marked: None
) -> None:
    created = await client.post(
        "/v1/projects", content=b'{"name": "early"}', headers=_with(headers, EARLY)
    )
    assert created.status_code == 201
    routed = await client.post(
        "/v1/projects", content=b'{"name": "routed"}', headers=_with(headers, ROUTED)
    )
    assert_problem(routed, 418, "route_dependency_ran")
    # A body sent in chunks (no Content-Length) is the route's too.
    chunks = iter([b'{"name": ', b'"chunked"}'])

    async def stream() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    chunked = await client.post("/v1/projects", content=stream(), headers=_with(headers, EARLY))
    assert_problem(chunked, 418, "route_dependency_ran")


@pytest.mark.parametrize(
    ("content", "content_type", "status", "code"),
    [
        (b'{"name": ', EARLY, 400, "malformed_json"),
        (b'{"name": ""}', EARLY, 422, "validation_error"),
        (b'{"name": "x", "extra": 1}', EARLY, 422, "validation_error"),
        (b"", EARLY, 422, "validation_error"),
        (b'{"name": "x"}', "text/plain", 422, "validation_error"),
    ],
    ids=["malformed", "invalid", "unknown-field", "empty", "not-json"],
)
async def test_a_request_the_early_path_refuses_is_answered_by_the_route_as_before(
    client: httpx.AsyncClient,
    headers: Headers,
    tenant: TenantRecord,
    engine: AsyncEngine,
    content: bytes,
    content_type: str,
    status: int,
    code: str,
) -> None:
    response = await client.post(
        "/v1/projects", content=content, headers=_with(headers, content_type)
    )
    assert_problem(response, status, code)
    assert await count_rows(engine, tenant, "projects") == 0


async def test_a_path_id_that_is_not_a_uuid_is_the_routes_422(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    response = await client.patch(
        "/v1/tasks/not-a-uuid", content=b'{"title": "t"}', headers=_with(headers, EARLY)
    )
    body = assert_problem(response, 422, "validation_error")
    assert body["errors"] == [
        {"loc": ["path", "task_id"], "msg": body["errors"][0]["msg"], "type": "uuid_parsing"}  # type: ignore[index]
    ]


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [(b'{"name": "x"}', 401, "not_authenticated"), (b'{"name": ""}', 401, "not_authenticated")],
    ids=["valid-body", "invalid-body"],
)
async def test_admission_is_decided_before_the_body_on_either_path(
    client: httpx.AsyncClient, content: bytes, status: int, code: str
) -> None:
    for media_type in (EARLY, ROUTED):
        response = await client.post(
            "/v1/projects", content=content, headers={"Content-Type": media_type}
        )
        assert_problem(response, status, code)


@PATHS
async def test_create_patch_delete_answer_alike_on_both_paths(
    client: httpx.AsyncClient, headers: Headers, media_type: str
) -> None:
    created = await client.post(
        "/v1/projects", content=b'{"name": "p"}', headers=_with(headers, media_type)
    )
    assert created.status_code == 201
    project = created.json()
    assert created.headers["etag"] == f'"{project["id"]}-1"'
    assert created.headers["location"] == f"/v1/projects/{project['id']}"
    assert created.headers["content-type"] == "application/json"
    url = f"/v1/projects/{project['id']}"

    stale = _with(headers, media_type, **{"If-Match": f'"{project["id"]}-7"'})
    refused = await client.patch(url, content=b'{"name": "q"}', headers=stale)
    assert_problem(refused, 412, "precondition_failed")
    current = _with(headers, media_type, **{"If-Match": created.headers["etag"]})
    changed = await client.patch(url, content=b'{"name": "q"}', headers=current)
    assert changed.status_code == 200
    assert changed.headers["etag"] == f'"{project["id"]}-2"'
    assert changed.headers["content-type"] == "application/json"
    assert changed.json() == {
        **project,
        "name": "q",
        "version": 2,
        "updated_at": changed.json()["updated_at"],
    }
    assert (await client.get(url, headers=headers)).json()["name"] == "q"  # invalidated

    gone = await client.delete(url, headers={**headers, "If-Match": changed.headers["etag"]})
    assert gone.status_code == 204
    assert_problem(await client.get(url, headers=headers), 404, "project_not_found")


@PATHS
async def test_an_idempotency_key_replays_on_both_paths(
    client: httpx.AsyncClient,
    headers: Headers,
    tenant: TenantRecord,
    engine: AsyncEngine,
    media_type: str,
) -> None:
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    keyed = _with(headers, media_type, **key)
    first = await client.post("/v1/projects", content=b'{"name": "once"}', headers=keyed)
    again = await client.post("/v1/projects", content=b'{"name": "once"}', headers=keyed)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    other = await client.post("/v1/projects", content=b'{"name": "twice"}', headers=keyed)
    assert other.status_code == 422
    # The key claimed on one path is the same key on the other (the claim is sent with the
    # BEGIN on the early path, on its own on the routed one: decision 0031).
    across = _with(headers, ROUTED if media_type == EARLY else EARLY, **key)
    crossed = await client.post("/v1/projects", content=b'{"name": "once"}', headers=across)
    assert crossed.headers["idempotent-replayed"] == "true"
    assert crossed.content == first.content
    assert await count_rows(engine, tenant, "projects") == 1


@PATHS
async def test_a_write_whose_commit_fails_answers_no_2xx_and_leaves_and_invalidates_nothing(
    app: FastAPI,
    client: httpx.AsyncClient,
    headers: Headers,
    tenant: TenantRecord,
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
    media_type: str,
) -> None:
    project = await post_project(client, headers, name="kept")
    url = f"/v1/projects/{project['id']}"
    assert (await client.get(url, headers=headers)).json()["name"] == "kept"  # now cached
    # A deferred constraint trigger: the statement (change and event) succeeds, the COMMIT
    # fails. The answer must follow the commit, so it cannot be a 2xx.
    schema = quote_ident(tenant.schema)
    await add_trigger(
        engine,
        schema,
        "refuse_at_commit",
        "RAISE EXCEPTION 'refused at commit';",
        f"CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON {schema}.audit_events "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {function}",
    )
    invalidated: list[tuple[CacheKey, ...]] = []
    invalidate: Callable[..., object] = app.state.cache.invalidate

    async def observed(slug: str, *keys: CacheKey) -> None:
        invalidated.append(keys)
        await invalidate(slug, *keys)  # type: ignore[misc]

    monkeypatch.setattr(app.state.cache, "invalidate", observed)
    events = await count_rows(engine, tenant, "audit_events")

    changed = await client.patch(
        url, content=b'{"name": "lost"}', headers=_with(headers, media_type)
    )
    assert_problem(changed, 500, "internal_error")
    created = await client.post(
        "/v1/projects", content=b'{"name": "lost"}', headers=_with(headers, media_type)
    )
    assert_problem(created, 500, "internal_error")

    assert await count_rows(engine, tenant, "projects") == 1
    assert await count_rows(engine, tenant, "audit_events") == events
    assert invalidated == []
    answer = (await client.get(url, headers=headers)).json()
    assert (answer["name"], answer["version"]) == ("kept", 1)


async def test_json_nested_past_the_recursion_limit_is_the_routes_400(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    response = await client.post("/v1/projects", content=deep, headers=_with(headers, EARLY))
    assert_problem(response, 400, "bad_request")
