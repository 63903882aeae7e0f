"""/metrics: route-template labels, the tenant-label bound, the token guard, scrape-time gauges."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException

from app import metrics
from app.api import instrumentation
from app.core.config import Settings
from app.core.context import tenant_var
from app.main import create_app
from tests.metrics_support import exposed_names, parse_samples, value

SERVER_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

CONTRACT_METRICS = {
    "http_requests_total",
    "http_request_duration_seconds_bucket",
    "tessera_tenant_requests_total",
    "tessera_rate_limit_rejections_total",
    "tessera_cache_requests_total",
    "tessera_tenants",
    "tessera_tenant_provisioning_seconds_bucket",
    "tessera_jwks_refreshes_total",
    "tessera_tenants_behind_head",
    "tessera_database_up",
    "tessera_db_pool_checked_out",
    "tessera_db_pool_size",
    "tessera_db_pool_max_connections",
}


async def _set_tenant(x_tenant: Annotated[str | None, Header()] = None) -> None:
    # Stands in for the tenant dependency: an async dependency sets tenant_var.
    if x_tenant:
        tenant_var.set(x_tenant)


def _items_router() -> APIRouter:
    router = APIRouter(dependencies=[Depends(_set_tenant)])

    @router.get("/items/{item_id}")
    async def get_item(item_id: str) -> dict[str, str]:
        if item_id == "missing":
            raise HTTPException(404)
        return {"id": item_id}

    @router.post("/items/{item_id}/parts/{part_id}")
    async def add_part(item_id: str, part_id: str) -> dict[str, str]:
        return {"id": part_id}

    # Nested prefixes: the template must carry both, as FastAPI routes it.
    outer, inner = APIRouter(prefix="/nested"), APIRouter(prefix="/inner")

    @inner.get("/things/{thing_id}")
    async def get_thing(thing_id: str) -> dict[str, str]:
        return {"id": thing_id}

    outer.include_router(inner)
    router.include_router(outer)
    return router


@asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    application: FastAPI = create_app(settings)
    application.include_router(_items_router())
    async with LifespanManager(application):
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def scrape(client: httpx.AsyncClient, token: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def test_handler_labels_found_by_path_head_equal_matching_every_route(settings: Settings) -> None:
    """The middleware looks only at the routes a path's first two segments allow: for a path
    of every route of the app (and the test's nested routers), and paths of none, with every
    method, it names the handler that matching every route in routing order names."""
    from fastapi.routing import iter_route_contexts
    from starlette.requests import Request
    from starlette.routing import Match

    application: FastAPI = create_app(settings)
    application.include_router(_items_router())
    middleware = instrumentation.RouteTemplateMiddleware(application)
    contexts = list(iter_route_contexts(application.routes))
    paths = {"/", "/v1", "/v1/", "/nothing/here", "/v1/unknown/x", "/admin/v1/nope"}
    for context in contexts:
        concrete = str(context.path_format)
        for name in context.param_convertors:
            concrete = concrete.replace("{" + name + "}", str(uuid.uuid4()), 1)
        paths |= {concrete, concrete + "/", concrete + "/extra"}
    checked = 0
    for path in sorted(paths):
        for method in ("GET", "HEAD", "POST", "PATCH", "PUT", "DELETE"):
            scope = {
                "type": "http", "method": method, "path": path, "root_path": "",
                "query_string": b"", "headers": [], "app": application,
            }  # fmt: skip
            expected: tuple[str, bool] = (path, False)
            partial = None
            for context in contexts:
                match, _ = context.matches(scope)
                if match is Match.FULL:
                    expected = (str(context.path_format), True)
                    break
                if match is Match.PARTIAL and partial is None:
                    partial = str(context.path_format)
            else:
                if partial is not None:
                    expected = (partial, True)
            assert middleware._get_handler(Request(scope)) == expected, (method, path)
            checked += 1
    assert checked > 300


async def test_http_metrics_label_route_templates_never_raw_paths(settings: Settings) -> None:
    raw_ids = [uuid.uuid4().hex for _ in range(3)]
    async with serve(settings) as client:
        for raw in raw_ids:
            assert (await client.get(f"/items/{raw}")).status_code == 200
        assert (await client.get("/items/missing")).status_code == 404
        assert (await client.post(f"/items/{raw_ids[0]}/parts/{raw_ids[1]}")).status_code == 200
        assert (await client.get(f"/nothing/here/{raw_ids[2]}")).status_code == 404
        assert (await client.get(f"/nested/inner/things/{raw_ids[2]}")).status_code == 200
        assert (await client.delete(f"/items/{raw_ids[0]}")).status_code == 405
        for platform_path in ("/healthz", "/readyz", "/metrics"):
            await client.get(platform_path)
        text = await scrape(client)

    samples = parse_samples(text)
    assert value(samples, "http_requests_total", handler="/items/{item_id}", status="200") >= 3
    assert value(samples, "http_requests_total", handler="/items/{item_id}", status="404") >= 1
    assert value(samples, "http_requests_total", handler="/items/{item_id}", status="405") >= 1
    assert (
        value(
            samples,
            "http_requests_total",
            handler="/items/{item_id}/parts/{part_id}",
            method="POST",
            status="200",
        )
        >= 1
    )
    assert value(samples, "http_requests_total", handler="none", method="GET", status="404") >= 1
    nested = "/nested/inner/things/{thing_id}"
    assert value(samples, "http_requests_total", handler=nested, status="200") >= 1
    assert (
        value(
            samples,
            "http_request_duration_seconds_count",
            handler="/items/{item_id}",
            method="GET",
        )
        >= 4
    )
    http_samples = [s for s in samples if s.name.startswith("http_request")]
    handlers = {s.labels["handler"] for s in http_samples}
    assert not handlers & {"/healthz", "/readyz", "/metrics"}
    for sample in samples:
        for label in sample.labels.values():
            assert not any(raw in label for raw in raw_ids), sample
            assert "/nothing" not in label, sample


async def test_tenant_requests_are_counted_by_status_class(settings: Settings) -> None:
    tenant = f"acme-{uuid.uuid4().hex[:8]}"
    async with serve(settings) as client:
        headers = {"x-tenant": tenant}
        await client.get("/items/1", headers=headers)
        await client.get("/items/2", headers=headers)
        await client.get("/items/missing", headers=headers)
        await client.get("/items/3")  # no tenant known: not a tenant request
        samples = parse_samples(await scrape(client))
    assert value(samples, "tessera_tenant_requests_total", tenant=tenant, status_class="2xx") == 2
    assert value(samples, "tessera_tenant_requests_total", tenant=tenant, status_class="4xx") == 1


def test_tenant_label_bound_admits_the_first_n_tenants_then_other() -> None:
    labels = metrics.TenantLabels(5)
    values = {labels(f"tenant-{i}") for i in range(50)}
    assert values == {f"tenant-{i}" for i in range(5)} | {metrics.OTHER_TENANT}
    assert labels("tenant-3") == "tenant-3"  # an admitted tenant keeps its label
    assert labels("tenant-7") == metrics.OTHER_TENANT


def test_tenant_label_bound_holds_across_threads() -> None:
    labels = metrics.TenantLabels(5)
    seen: set[str] = set()
    lock = threading.Lock()

    def worker(offset: int) -> None:
        local = {labels(f"t{(offset + i) % 50}") for i in range(500)}
        with lock:
            seen.update(local)

    threads = [threading.Thread(target=worker, args=(n * 7,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen - {metrics.OTHER_TENANT}) == 5
    assert metrics.OTHER_TENANT in seen


async def test_tenant_label_bound_holds_in_metrics_output(settings: Settings) -> None:
    prefix = f"bound{uuid.uuid4().hex[:6]}-"
    previous = metrics._tenant_labels.limit
    try:
        async with serve(settings.model_copy(update={"metrics_max_tenants": 5})) as client:
            for i in range(50):
                await client.get("/items/1", headers={"x-tenant": f"{prefix}{i}"})
            samples = parse_samples(await scrape(client))
    finally:
        metrics.configure(previous)
    ours = {
        s.labels["tenant"]
        for s in samples
        if s.name == "tessera_tenant_requests_total" and s.labels["tenant"].startswith(prefix)
    }
    assert len(ours) <= 5
    assert value(samples, "tessera_tenant_requests_total", tenant="_other") >= 45


async def test_recording_functions_reach_the_contract_metrics(settings: Settings) -> None:
    tenant = f"rl-{uuid.uuid4().hex[:8]}"
    async with serve(settings) as client:
        before = parse_samples(await scrape(client))
        metrics.record_rate_limit_rejection(tenant)
        metrics.record_cache("hit")
        metrics.record_cache("error")
        metrics.record_jwks_refresh("success")
        metrics.observe_provisioning(0.3)
        after = parse_samples(await scrape(client))

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("tessera_rate_limit_rejections_total", tenant=tenant) == 1
    assert delta("tessera_cache_requests_total", result="hit") == 1
    assert delta("tessera_cache_requests_total", result="error") == 1
    assert delta("tessera_cache_requests_total", result="miss") == 0
    assert delta("tessera_jwks_refreshes_total", result="success") == 1
    assert delta("tessera_tenant_provisioning_seconds_count") == 1
    assert delta("tessera_tenant_provisioning_seconds_bucket", le="0.5") == 1


async def test_every_contract_metric_is_exposed_before_any_event(client: httpx.AsyncClient) -> None:
    names = exposed_names(await scrape(client))
    assert CONTRACT_METRICS <= names, CONTRACT_METRICS - names


async def test_pool_gauges_report_the_configured_pool(client: httpx.AsyncClient) -> None:
    samples = parse_samples(await scrape(client))
    assert value(samples, "tessera_db_pool_size") == 5
    assert value(samples, "tessera_db_pool_max_connections") == 15
    assert 0 <= value(samples, "tessera_db_pool_checked_out") <= 15


class TestMetricsToken:
    TOKEN = "s3cret-metrics-token-0123456789"

    async def test_missing_token_is_401_problem(self, settings: Settings) -> None:
        async with serve(settings.model_copy(update={"metrics_token": self.TOKEN})) as client:
            response = await client.get("/metrics")
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["code"] == "not_authenticated"
        assert "tessera_" not in response.text

    @pytest.mark.parametrize(
        "authorization",
        [f"Bearer {TOKEN}x", "Bearer wrong", f"Basic {TOKEN}", "Bearer "],
    )
    async def test_wrong_token_is_401_problem(self, settings: Settings, authorization: str) -> None:
        async with serve(settings.model_copy(update={"metrics_token": self.TOKEN})) as client:
            response = await client.get("/metrics", headers={"Authorization": authorization})
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] in {"invalid_token", "not_authenticated"}
        assert "tessera_" not in response.text

    async def test_right_token_answers_metrics(self, settings: Settings) -> None:
        async with serve(settings.model_copy(update={"metrics_token": self.TOKEN})) as client:
            text = await scrape(client, token=self.TOKEN)
        assert "tessera_tenants" in text

    async def test_no_token_configured_means_open(self, client: httpx.AsyncClient) -> None:
        assert "http_requests_total" in await scrape(client)


@pytest.fixture
async def registry_database() -> AsyncIterator[str]:
    """A database of its own, so a hand-made platform.tenants never meets real migrations."""
    name = f"tessera_metrics_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(SERVER_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = urlunsplit(urlsplit(SERVER_URL)._replace(path="/" + name))
    yield url
    admin = await asyncpg.connect(SERVER_URL)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def test_tenants_gauge_reads_the_registry_at_scrape_time(
    settings: Settings, registry_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = await asyncpg.connect(registry_database)
    try:
        await conn.execute(
            "CREATE SCHEMA platform;"
            "CREATE TABLE platform.tenants"
            " (slug text PRIMARY KEY, status text, schema_version text);"
            "INSERT INTO platform.tenants VALUES"
            " ('a1', 'active', 'head1'), ('a2', 'active', 'old0'), ('a3', 'active', 'head1'),"
            " ('s1', 'suspended', NULL), ('d1', 'deleted', NULL)"
        )
        monkeypatch.setattr(instrumentation, "tenant_migrations_head", lambda: "head1")
        async with serve(settings.model_copy(update={"database_url": registry_database})) as client:
            first = parse_samples(await scrape(client))
            await conn.execute("UPDATE platform.tenants SET status = 'suspended' WHERE slug = 'a1'")
            second = parse_samples(await scrape(client))
    finally:
        await conn.close()
    assert value(first, "tessera_tenants", status="active") == 3
    assert value(first, "tessera_tenants", status="suspended") == 1
    assert value(first, "tessera_tenants", status="deleted") == 1
    assert value(first, "tessera_tenants_behind_head") == 3  # d1 is behind too
    assert value(first, "tessera_database_up") == 1
    assert value(second, "tessera_tenants", status="active") == 2
    assert value(second, "tessera_tenants", status="suspended") == 2


async def test_metrics_answer_without_a_tenant_registry(
    settings: Settings, registry_database: str
) -> None:
    async with serve(settings.model_copy(update={"database_url": registry_database})) as client:
        samples = parse_samples(await scrape(client))
    assert value(samples, "tessera_database_up") == 1


async def test_metrics_answer_quickly_when_the_database_is_unreachable(settings: Settings) -> None:
    broken = settings.model_copy(update={"database_url": "postgresql://postgres@127.0.0.1:1/x"})
    async with serve(broken) as client:
        started = time.monotonic()
        samples = parse_samples(await scrape(client))
        assert time.monotonic() - started < 5
    assert value(samples, "tessera_database_up") == 0
