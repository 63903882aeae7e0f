"""Counting requests (app/api/admission.count_request) on a real app and Redis: headers on
every response, 429, 503."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import APIRouter, Depends, FastAPI, Header, Request

from app.api.admission import count_request
from app.api.middleware import add_response_headers
from app.core.config import Settings
from app.core.errors import NotFound
from app.main import create_app
from app.services.tenant_keys import TenantKeys
from tests.redis_layer.redis_servers import REDIS_URL, new_slug


@dataclass
class FakeTenant:
    keys: TenantKeys
    rate_limit: str


# One id per invented slug, as the registry would give each tenant.
IDS: dict[str, uuid.UUID] = {}


async def tenant_from_header(
    x_tenant: Annotated[str, Header()], x_limit: Annotated[str, Header()]
) -> FakeTenant:
    return FakeTenant(TenantKeys(x_tenant, IDS.setdefault(x_tenant, uuid.uuid4())), x_limit)


async def rate_limited(
    request: Request, tenant: Annotated[FakeTenant, Depends(tenant_from_header)]
) -> None:
    """What the tenant routes' admission does once it knows the tenant."""
    rate, _ = await count_request(request.app.state, tenant)
    if rate is not None:
        add_response_headers(request, rate.headers())


def tenant_app(redis_url: str, *, fail_open: bool = True) -> FastAPI:
    settings = Settings(
        environment="test",
        redis_url=redis_url,
        rate_limit_fail_open=fail_open,
        log_level="CRITICAL",
    )
    app = create_app(settings)
    router = APIRouter(prefix="/v1", dependencies=[Depends(rate_limited)])

    @router.get("/things/{thing_id}")
    async def get_thing(thing_id: int) -> dict[str, int]:
        if thing_id == 404:
            raise NotFound("no such thing", code="thing_not_found")
        return {"id": thing_id}

    app.include_router(router)
    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = tenant_app(REDIS_URL)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            yield c


async def test_success_404_and_422_all_carry_the_rate_limit_headers(
    client: httpx.AsyncClient,
) -> None:
    headers = {"x-tenant": new_slug(), "x-limit": "10/minute"}
    ok = await client.get("/v1/things/1", headers=headers)
    missing = await client.get("/v1/things/404", headers=headers)
    invalid = await client.get("/v1/things/not-a-number", headers=headers)
    assert [r.status_code for r in (ok, missing, invalid)] == [200, 404, 422]
    # Router dependencies run before path parameters are judged, so the 422 was counted.
    for response, remaining in ((ok, "9"), (missing, "8"), (invalid, "7")):
        assert response.headers["x-ratelimit-limit"] == "10"
        assert response.headers["x-ratelimit-remaining"] == remaining
        assert response.headers["x-ratelimit-reset"].isdigit()


async def test_over_the_limit_answers_429_problem_with_retry_after_once(
    client: httpx.AsyncClient,
) -> None:
    headers = {"x-tenant": new_slug(), "x-limit": "2/minute"}
    for _ in range(2):
        assert (await client.get("/v1/things/1", headers=headers)).status_code == 200
    response = await client.get("/v1/things/1", headers=headers)
    assert response.status_code == 429
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "rate_limited"
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers.get_list("x-ratelimit-remaining") == ["0"]
    assert response.headers["x-request-id"]


async def test_redis_down_serves_without_headers_or_answers_503(closed_port_url: str) -> None:
    headers = {"x-tenant": new_slug(), "x-limit": "2/minute"}
    for fail_open, expected in ((True, 200), (False, 503)):
        app = tenant_app(closed_port_url, fail_open=fail_open)
        async with LifespanManager(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                response = await c.get("/v1/things/1", headers=headers)
        assert response.status_code == expected
        assert "x-ratelimit-limit" not in response.headers
        if expected == 503:
            assert response.json()["code"] == "rate_limiter_unavailable"
