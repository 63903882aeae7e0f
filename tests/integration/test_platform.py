"""Foundation: health, readiness, problem+json for every error, request ids, body limit."""

from __future__ import annotations

import gc
import time
import uuid

import httpx
from asgi_lifespan import LifespanManager

from app.core.config import Settings
from app.main import create_app
from app.runtime import GC_THRESHOLDS

PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status
    assert body["code"] == code
    for key in ("type", "title", "detail"):
        assert isinstance(body[key], str) and body[key]
    return body


async def test_healthz_answers_ok(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_checks_database_and_redis(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}


async def _client_for(settings: Settings) -> tuple[LifespanManager, httpx.AsyncClient]:
    application = create_app(settings)
    manager = LifespanManager(application)
    await manager.__aenter__()
    transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
    return manager, httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def test_readyz_503_when_database_unreachable_within_5_seconds(settings: Settings) -> None:
    broken = settings.model_copy(
        update={"database_url": "postgresql://postgres@127.0.0.1:1/nowhere"}
    )
    manager, client = await _client_for(broken)
    try:
        started = time.monotonic()
        response = await client.get("/readyz")
        assert time.monotonic() - started < 5
        assert response.status_code == 503
        assert response.json()["checks"]["database"] == "error"
    finally:
        await client.aclose()
        await manager.__aexit__(None, None, None)


async def test_readyz_degraded_when_redis_unreachable(settings: Settings) -> None:
    broken = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    manager, client = await _client_for(broken)
    try:
        response = await client.get("/readyz")
        assert response.status_code == 200
        assert response.json() == {
            "status": "ok",
            "checks": {"database": "ok", "redis": "degraded"},
        }
    finally:
        await client.aclose()
        await manager.__aexit__(None, None, None)


async def test_unknown_route_is_problem_404(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/nope"), 404, "not_found")


async def test_wrong_method_is_problem_405(client: httpx.AsyncClient) -> None:
    assert_problem(await client.post("/healthz"), 405, "method_not_allowed")


async def test_405_allow_names_every_method_of_the_path(client: httpx.AsyncClient) -> None:
    # Two routes share the path; the router alone would name the first one's method only.
    response = await client.put("/admin/v1/tenants")
    assert_problem(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "GET, OPTIONS, POST"


async def test_options_answers_200_with_the_methods_of_the_path(client: httpx.AsyncClient) -> None:
    response = await client.options("/admin/v1/tenants/acme")
    assert response.status_code == 200
    assert response.headers["allow"] == "DELETE, GET, OPTIONS, PATCH"
    assert response.headers["content-length"] == "0"
    assert_problem(await client.options("/nope"), 404, "not_found")


async def test_request_id_is_echoed_when_valid(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": "abc.DEF_123-x"})
    assert response.headers["X-Request-ID"] == "abc.DEF_123-x"


async def test_request_id_is_replaced_when_invalid(client: httpx.AsyncClient) -> None:
    for bad in ("has space", "x" * 129, "semi;colon", "", "trailing-newline\n"):
        response = await client.get("/healthz", headers={"X-Request-ID": bad})
        uuid.UUID(response.headers["X-Request-ID"])


async def test_request_id_on_error_responses(client: httpx.AsyncClient) -> None:
    response = await client.get("/nope", headers={"X-Request-ID": "req-1"})
    assert response.headers["X-Request-ID"] == "req-1"
    assert response.json()["request_id"] == "req-1"


async def test_what_startup_built_is_kept_out_of_the_garbage_collector_while_serving(
    settings: Settings,
) -> None:
    application = create_app(settings)
    before = gc.get_threshold()
    async with LifespanManager(application):
        assert gc.get_freeze_count() > 10_000  # the app, its routes, models, libraries
        # and young collections rare enough that requests in flight seldom reach the oldest
        assert gc.get_threshold() == GC_THRESHOLDS
    assert gc.get_freeze_count() == 0  # collectable again once it stopped
    assert gc.get_threshold() == before
