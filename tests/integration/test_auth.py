"""Bearer authentication over HTTP: the answers of CONTRACT section 3, on probe routes.

The probe routes live only in this module's test app (the production app has none); they
depend on the real dependencies, and the tokens are verified against the dev issuer served
over HTTP.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import APIRouter, FastAPI, Request

from app.api.dependencies.auth import AdminDep, PrincipalDep, check_scopes, get_principal
from app.core.config import Settings
from app.main import create_app
from tests.conftest import MakeToken, ServedApp

PROBLEM = "application/problem+json"

probe = APIRouter(prefix="/_probe")


@probe.get("/tenant")
async def tenant_probe(principal: PrincipalDep) -> dict[str, object]:
    check_scopes(principal, "api:read", "api:write")
    return {
        "sub": principal.subject,
        "tenant": principal.tenant,
        "scopes": sorted(principal.scopes),
    }


@probe.get("/admin")
async def admin_probe(principal: AdminDep) -> dict[str, object]:
    return {"sub": principal.subject}


@probe.get("/twice")
async def twice_probe(request: Request, principal: PrincipalDep) -> dict[str, bool]:
    return {"same": (await get_principal(request)) is principal}


def probe_app(settings: Settings) -> FastAPI:
    application = create_app(settings)
    application.include_router(probe)
    return application


@pytest.fixture(scope="module")
async def probe_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    application = probe_app(settings)
    async with LifespanManager(application):
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_problem(
    response: httpx.Response, status: int, code: str, challenge: str | None
) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.headers.get("www-authenticate") == challenge
    body = response.json()
    assert (body["status"], body["code"]) == (status, code)
    assert all(isinstance(body[key], str) and body[key] for key in ("type", "title", "detail"))
    return body


INVALID = 'Bearer error="invalid_token"'
INSUFFICIENT = 'Bearer error="insufficient_scope"'


# --- tenant plane (PrincipalDep + check_scopes) ------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
async def test_tenant_token_reaches_the_tenant_probe(
    probe_client: httpx.AsyncClient, make_token: MakeToken, alg: str
) -> None:
    response = await probe_client.get(
        "/_probe/tenant", headers=bearer(make_token(tenant="acme", scopes="api:read", alg=alg))
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"sub": "test-user", "tenant": "acme", "scopes": ["api:read"]}


async def test_no_token_is_401_not_authenticated_with_bearer_challenge(
    probe_client: httpx.AsyncClient,
) -> None:
    response = await probe_client.get("/_probe/tenant")
    assert_problem(response, 401, "not_authenticated", "Bearer")


@pytest.mark.parametrize("authorization", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", "Token x"])
async def test_no_bearer_token_is_401_not_authenticated(
    probe_client: httpx.AsyncClient, authorization: str
) -> None:
    response = await probe_client.get("/_probe/tenant", headers={"Authorization": authorization})
    assert_problem(response, 401, "not_authenticated", "Bearer")


async def test_bearer_scheme_is_case_insensitive(
    probe_client: httpx.AsyncClient, make_token: MakeToken
) -> None:
    response = await probe_client.get(
        "/_probe/tenant", headers={"Authorization": f"bearer {make_token()}"}
    )
    assert response.status_code == 200, response.text


async def test_invalid_token_is_401_invalid_token_and_never_echoed(
    probe_client: httpx.AsyncClient, make_token: MakeToken
) -> None:
    expired = make_token(exp=1_000_000, iat=999_000, nbf=999_000)
    response = await probe_client.get("/_probe/tenant", headers=bearer(expired))
    assert_problem(response, 401, "invalid_token", INVALID)
    assert expired not in response.text
    assert expired.split(".")[1] not in response.text


@pytest.mark.parametrize(
    "overrides",
    [{"iss": "https://evil.example"}, {"aud": "other-api"}, {"nbf": 4_000_000_000}],
    ids=["wrong_issuer", "wrong_audience", "not_yet_valid"],
)
async def test_token_for_someone_else_is_401_invalid_token(
    probe_client: httpx.AsyncClient, make_token: MakeToken, overrides: dict[str, object]
) -> None:
    response = await probe_client.get("/_probe/tenant", headers=bearer(make_token(**overrides)))
    assert_problem(response, 401, "invalid_token", INVALID)


@pytest.mark.parametrize(
    "overrides", [{"exp": 10**400}, {"iat": -(10**400)}], ids=["exp_too_late", "iat_too_early"]
)
async def test_a_time_claim_too_large_for_a_float_is_401_invalid_token(
    probe_client: httpx.AsyncClient, make_token: MakeToken, overrides: dict[str, object]
) -> None:
    """A NumericDate may be any JSON number; one no float can hold is refused, not a 500."""
    response = await probe_client.get("/_probe/tenant", headers=bearer(make_token(**overrides)))
    body = assert_problem(response, 401, "invalid_token", INVALID)
    assert "out of range" in str(body["detail"])


async def test_malformed_token_is_401_invalid_token(probe_client: httpx.AsyncClient) -> None:
    response = await probe_client.get("/_probe/tenant", headers=bearer("not-a-jwt"))
    assert_problem(response, 401, "invalid_token", INVALID)


async def test_oversize_token_is_401_invalid_token(probe_client: httpx.AsyncClient) -> None:
    response = await probe_client.get("/_probe/tenant", headers=bearer("a" * 9000))
    assert_problem(response, 401, "invalid_token", INVALID)


async def test_token_without_api_scope_is_403_insufficient_scope(
    probe_client: httpx.AsyncClient, make_token: MakeToken
) -> None:
    response = await probe_client.get(
        "/_probe/tenant", headers=bearer(make_token(scopes="profile"))
    )
    assert_problem(response, 403, "insufficient_scope", INSUFFICIENT)


async def test_scp_list_counts_as_scopes(
    probe_client: httpx.AsyncClient, make_token: MakeToken
) -> None:
    token = make_token(scopes=(), scp=["api:write"])
    response = await probe_client.get("/_probe/tenant", headers=bearer(token))
    assert response.status_code == 200, response.text
    assert response.json()["scopes"] == ["api:write"]


async def test_principal_is_resolved_once_per_request(
    probe_client: httpx.AsyncClient, make_token: MakeToken
) -> None:
    response = await probe_client.get("/_probe/twice", headers=bearer(make_token()))
    assert response.json() == {"same": True}


# --- admin plane (AdminDep) ---------------------------------------------------------------


async def test_admin_token_reaches_the_admin_probe(
    probe_client: httpx.AsyncClient, make_token: MakeToken
) -> None:
    token = make_token(tenant=None, scopes="platform:admin", sub="operator")
    response = await probe_client.get("/_probe/admin", headers=bearer(token))
    assert response.status_code == 200, response.text
    assert response.json() == {"sub": "operator"}


async def test_tenant_token_is_403_on_the_admin_plane_even_with_the_admin_scope(
    probe_client: httpx.AsyncClient, make_token: MakeToken
) -> None:
    token = make_token(tenant="acme", scopes="api:read api:write platform:admin")
    response = await probe_client.get("/_probe/admin", headers=bearer(token))
    assert_problem(response, 403, "insufficient_scope", INSUFFICIENT)


async def test_token_without_admin_scope_is_403_insufficient_scope(
    probe_client: httpx.AsyncClient, make_token: MakeToken
) -> None:
    token = make_token(tenant=None, scopes="api:read api:write")
    response = await probe_client.get("/_probe/admin", headers=bearer(token))
    assert_problem(response, 403, "insufficient_scope", INSUFFICIENT)


async def test_no_token_on_the_admin_plane_is_401_with_bearer_challenge(
    probe_client: httpx.AsyncClient,
) -> None:
    response = await probe_client.get("/_probe/admin")
    assert_problem(response, 401, "not_authenticated", "Bearer")


# --- the issuer, the app, the document ----------------------------------------------------


async def test_never_reachable_issuer_is_503_auth_unavailable_not_500(
    settings: Settings, make_token: MakeToken
) -> None:
    closed = ServedApp()
    closed.stop()  # its port now refuses connections
    unreachable = settings.model_copy(
        update={"auth_issuer": closed.url, "auth_jwks_timeout_seconds": 1.0}
    )
    application = probe_app(unreachable)
    async with LifespanManager(application):  # start-up does not need the issuer
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            response = await c.get("/_probe/tenant", headers=bearer(make_token(iss=closed.url)))
    assert_problem(response, 503, "auth_unavailable", None)


async def test_openapi_declares_the_bearer_scheme_on_protected_routes(
    probe_client: httpx.AsyncClient,
) -> None:
    document = (await probe_client.get("/openapi.json")).json()
    scheme = document["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for path in ("/_probe/tenant", "/_probe/admin"):
        assert document["paths"][path]["get"]["security"] == [{"bearer": []}]
    assert "security" not in document["paths"]["/healthz"]["get"]


async def test_production_app_has_a_token_verifier_and_no_probe_routes(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    assert app.state.token_verifier is not None
    assert (await client.get("/_probe/tenant")).status_code == 404
