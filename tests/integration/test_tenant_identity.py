"""A tenant is an identity, not a slug (issue 18): a tenant created under the slug of a deleted
one never receives the old tenant's cached responses, rate-limit windows or tokens, whatever
Redis heard or missed when the slug changed hands, on any replica.

Two ways to lose the delete's generation bump are exercised: Redis down for everyone while
the slug changes hands (then back, with its data), and one replica cut off from a Redis the
others still use, with the new tenant created by `tessera tenants create` from a host that
cannot reach Redis either.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
import redis
from joserfc import jwt
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.services.tenant_keys import TenantKeys
from tests.conftest import RunningIssuer
from tests.factories import post_project
from tests.metrics_support import CacheMeter
from tests.redis_layer.redis_servers import RestartableRedis
from tests.servers import free_port
from tests.support import assert_problem, eventually, running_app

Headers = dict[str, str]
MakeToken = Callable[..., str]


def bearer(token: str) -> Headers:
    return {"Authorization": f"Bearer {token}"}


async def create(client: httpx.AsyncClient, admin: Headers, slug: str) -> dict[str, Any]:
    response = await client.post(
        "/admin/v1/tenants", json={"slug": slug, "name": slug}, headers=admin
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def backdate(engine: AsyncEngine, slug: str, seconds: int) -> None:
    """Make the tenant `seconds` older, so a token issued a little while ago is younger than
    it (tokens are refused only when older than their tenant, less the leeway)."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE platform.tenants SET created_at = created_at - make_interval(secs => :s)"
                " WHERE slug = :slug"
            ),
            {"s": seconds, "slug": slug},
        )


async def status_of(client: httpx.AsyncClient, url: str, headers: Headers) -> int:
    return (await client.get(url, headers=headers)).status_code


# --- the iat rule ------------------------------------------------------------------------


async def test_a_token_issued_before_its_tenant_was_created_gets_401_token_predates_tenant(
    client: httpx.AsyncClient,
    admin: Headers,
    make_token: MakeToken,
    unique_slug: Callable[[str], str],
    settings: Settings,
) -> None:
    slug = unique_slug("iat")
    await create(client, admin, slug)
    leeway = settings.auth_leeway_seconds
    now = int(time.time())
    older = bearer(make_token(tenant=slug, iat=now - leeway - 60))
    # The early path (a cached read), the routed path (a write) and an uncached read.
    for method, url in (("GET", "/v1/projects"), ("POST", "/v1/projects"), ("GET", "/v1/tenant")):
        response = await client.request(method, url, json={"name": "x"}, headers=older)
        body = assert_problem(response, 401, "token_predates_tenant")
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        assert "before its tenant was created" in str(body["detail"])
        assert "x-ratelimit-limit" not in response.headers  # refused before counting

    within_leeway = bearer(make_token(tenant=slug, iat=now - leeway + 5))
    fresh = bearer(make_token(tenant=slug))
    for headers in (within_leeway, fresh):
        assert (await client.get("/v1/projects", headers=headers)).status_code == 200
        assert (
            await client.post("/v1/projects", json={"name": "y"}, headers=headers)
        ).status_code == 201


async def test_a_token_without_iat_is_accepted(
    client: httpx.AsyncClient,
    issuer: RunningIssuer,
    admin: Headers,
    unique_slug: Callable[[str], str],
) -> None:
    """CONTRACT section 3 checks `iat` only when present; such a token cannot be placed in
    time, so it is let in (README: issuers should set `iat`)."""
    slug = unique_slug("noiat")
    await create(client, admin, slug)
    key = issuer.dev.signing_key("RS256")
    now = int(time.time())
    claims = {
        "iss": issuer.url,
        "sub": "no-iat",
        "aud": "tessera",
        "exp": now + 600,
        "tenant": slug,
        "scope": "api:read",
    }
    token = jwt.encode({"alg": "RS256", "kid": key.kid}, claims, key, algorithms=["RS256"])
    assert (await client.get("/v1/tenant", headers=bearer(token))).status_code == 200


async def test_the_openapi_document_lists_token_predates_tenant(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    answer = document["paths"]["/v1/projects"]["get"]["responses"]["401"]
    assert "token_predates_tenant" in answer["description"]


# --- a slug changing hands without Redis ------------------------------------------------


class Scenario:
    """Old acme on two replicas, A and B, then the slug handed to new acme."""

    def __init__(self, a: httpx.AsyncClient, b: httpx.AsyncClient, slug: str) -> None:
        self.a, self.b, self.slug = a, b, slug

    @property
    def both(self) -> list[httpx.AsyncClient]:
        return [self.a, self.b]


@pytest.fixture
async def replicas(settings: Settings) -> AsyncIterator[Callable[[str, str], Any]]:
    """`replicas(a_redis_url, b_redis_url)`: two running apps sharing the database."""
    async with AsyncExitStack() as stack:

        async def start(a_url: str, b_url: str) -> tuple[httpx.AsyncClient, httpx.AsyncClient]:
            clients = []
            for url in (a_url, b_url):
                app_settings = settings.model_copy(update={"redis_url": url})
                _, client = await stack.enter_async_context(running_app(app_settings))
                clients.append(client)
            return clients[0], clients[1]

        yield start


def old_entries(port: int, keys: TenantKeys) -> list[bytes]:
    with redis.Redis(port=port) as direct:
        return [k for k in direct.keys(f"{keys.prefix}*") if b":rl:" not in k]


async def old_acme_cached_on_b(
    scenario: Scenario, engine: AsyncEngine, admin: Headers, make_token: MakeToken
) -> tuple[Headers, dict[str, Any], TenantKeys]:
    """Old acme, an hour old, with a project, its page and the project cached on B (hits)."""
    first = await create(scenario.a, admin, scenario.slug)
    await backdate(engine, scenario.slug, 3600)
    old_token = bearer(make_token(tenant=scenario.slug, iat=int(time.time()) - 600))
    for replica in scenario.both:
        await eventually(lambda r=replica: status_of(r, "/v1/tenant", old_token), 200, within=2.0)
    project = await post_project(scenario.a, old_token, name="old acme's")
    for url in ("/v1/projects", f"/v1/projects/{project['id']}"):
        await scenario.b.get(url, headers=old_token)
        meter = CacheMeter()
        assert (await scenario.b.get(url, headers=old_token)).status_code == 200
        assert meter.delta()["hit"] == 1
    return old_token, project, TenantKeys(scenario.slug, uuid.UUID(first["id"]))


async def redis_check(client: httpx.AsyncClient) -> str:
    return str((await client.get("/readyz")).json()["checks"]["redis"])


async def assert_new_acme_never_sees_old_acme(
    scenario: Scenario, old_token: Headers, project: dict[str, Any], make_token: MakeToken
) -> None:
    """B still holds old acme's unexpired entries (and rate-limit window) under old acme's
    keys; new acme's token must read new acme, and old acme's token nothing at all."""
    await eventually(lambda: redis_check(scenario.b), "ok", within=5.0)
    new_token = bearer(make_token(tenant=scenario.slug))
    first = await scenario.b.get("/v1/tenant", headers=new_token)
    assert first.json()["name"] == scenario.slug
    # A window of its own: the old tenant's requests of this minute are not counted.
    limit = int(first.headers["x-ratelimit-limit"])
    assert int(first.headers["x-ratelimit-remaining"]) == limit - 1
    meter = CacheMeter()
    for index, replica in enumerate((scenario.b, scenario.a, scenario.b)):
        listed = await replica.get("/v1/projects", headers=new_token)
        assert (listed.status_code, listed.json()["items"]) == (200, [])
        assert_problem(
            await replica.get(f"/v1/projects/{project['id']}", headers=new_token),
            404,
            "project_not_found",
        )
        if index == 0:  # B asked Redis, where old acme's entries are, and missed
            assert meter.delta() == {"hit": 0, "miss": 2, "error": 0}
        for url in ("/v1/projects", f"/v1/projects/{project['id']}", "/v1/tenant"):
            assert_problem(await replica.get(url, headers=old_token), 401, "token_predates_tenant")


async def test_redis_down_while_the_slug_changes_hands_on_two_replicas(
    replicas: Callable[[str, str], Any],
    redis_server: RestartableRedis,
    engine: AsyncEngine,
    admin: Headers,
    make_token: MakeToken,
    unique_slug: Callable[[str], str],
) -> None:
    a, b = await replicas(redis_server.url, redis_server.url)
    scenario = Scenario(a, b, unique_slug("acme"))
    old_token, project, old_keys = await old_acme_cached_on_b(scenario, engine, admin, make_token)

    redis_server.stop()  # both the delete's bump and anything the create might do are lost
    url = f"/admin/v1/tenants/{scenario.slug}"
    assert (await a.post(f"{url}/suspend", headers=admin)).status_code == 200
    assert (await a.delete(url, headers=admin)).status_code == 204
    await create(a, admin, scenario.slug)
    redis_server.start()  # with its data: old acme's entries are still there, unexpired
    assert len(old_entries(redis_server.port, old_keys)) >= 2

    await assert_new_acme_never_sees_old_acme(scenario, old_token, project, make_token)


async def test_a_replica_cut_off_from_redis_deletes_and_the_cli_recreates_without_it(
    replicas: Callable[[str, str], Any],
    redis_server: RestartableRedis,
    engine: AsyncEngine,
    settings: Settings,
    database_url: str,
    admin: Headers,
    make_token: MakeToken,
    unique_slug: Callable[[str], str],
) -> None:
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    a, b = await replicas(unreachable, redis_server.url)
    scenario = Scenario(a, b, unique_slug("acme"))
    old_token, project, old_keys = await old_acme_cached_on_b(scenario, engine, admin, make_token)

    url = f"/admin/v1/tenants/{scenario.slug}"
    assert (await a.post(f"{url}/suspend", headers=admin)).status_code == 200
    assert (await a.delete(url, headers=admin)).status_code == 204  # its bump is lost
    env = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": database_url,
        "DB_TENANT_ROLE_PREFIX": settings.db_tenant_role_prefix,
        "REDIS_URL": unreachable,
    }
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app.cli", "tenants", "create", scenario.slug],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr.lower()  # nothing of Redis to warn about
    assert len(old_entries(redis_server.port, old_keys)) >= 2  # B's entries are still there

    await assert_new_acme_never_sees_old_acme(scenario, old_token, project, make_token)
