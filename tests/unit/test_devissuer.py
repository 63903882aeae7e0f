"""The development issuer: persisted keys, its HTTP endpoints, and the dev-token CLI."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from app.auth.tokens import TokenVerifier
from app.cli import main
from app.core.config import Settings, get_settings
from app.devissuer import DEV_CLIENT_ID, DEV_CLIENT_SECRET, DevIssuer, DevIssuerRefused
from tests.conftest import RunningIssuer

StartIssuer = Callable[[], RunningIssuer]


@pytest.fixture
def private_issuer(start_issuer: StartIssuer) -> RunningIssuer:
    return start_issuer()


@pytest.fixture
async def verifier(private_issuer: RunningIssuer) -> AsyncIterator[TokenVerifier]:
    v = TokenVerifier(Settings(environment="test", auth_issuer=private_issuer.url))
    yield v
    await v.aclose()


@pytest.fixture
def cli_env(private_issuer: RunningIssuer, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI reads settings from the environment, as it does in real use."""
    monkeypatch.setenv("ENVIRONMENT", "test")
    monkeypatch.setenv("AUTH_ISSUER", private_issuer.url)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_keys_are_generated_once_and_survive_restarts(tmp_path: Path) -> None:
    first = DevIssuer(Settings(environment="test"), key_dir=tmp_path)
    second = DevIssuer(Settings(environment="test"), key_dir=tmp_path)
    assert first.jwks() == second.jwks()
    assert {key["alg"] for key in first.jwks()["keys"]} == {"RS256", "ES256"}
    assert all("d" not in key for key in first.jwks()["keys"])  # only public parts published
    assert (tmp_path / "keys.json").stat().st_mode & 0o077 == 0


def test_dev_issuer_refuses_production(tmp_path: Path) -> None:
    production = Settings(
        environment="production",
        auth_issuer="https://issuer.example",
        database_url="postgresql://u@db.example:5432/tessera",
        metrics_token="m" * 32,
    )
    with pytest.raises(DevIssuerRefused):
        DevIssuer(production, key_dir=tmp_path)
    assert not (tmp_path / "keys.json").exists()


async def test_discovery_points_at_the_jwks(private_issuer: RunningIssuer) -> None:
    async with httpx.AsyncClient() as http:
        discovery = (
            await http.get(f"{private_issuer.url}/.well-known/openid-configuration")
        ).json()
        assert discovery["issuer"] == private_issuer.url
        jwks = (await http.get(discovery["jwks_uri"])).json()
    assert len(jwks["keys"]) == 2


async def test_client_credentials_token_is_accepted_by_the_verifier(
    private_issuer: RunningIssuer, verifier: TokenVerifier
) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{private_issuer.url}/token",
            data={"grant_type": "client_credentials", "scope": "api:read", "tenant": "acme"},
            auth=(DEV_CLIENT_ID, DEV_CLIENT_SECRET),
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer"
    claims = await verifier.verify(body["access_token"])
    assert (claims.subject, claims.tenant, claims.scopes) == (
        DEV_CLIENT_ID,
        "acme",
        frozenset({"api:read"}),
    )


@pytest.mark.parametrize(
    ("data", "status", "error"),
    [
        ({"grant_type": "client_credentials", "client_secret": "wrong"}, 401, "invalid_client"),
        (
            {"grant_type": "password", "client_secret": DEV_CLIENT_SECRET},
            400,
            "unsupported_grant_type",
        ),
        (
            {
                "grant_type": "client_credentials",
                "client_secret": DEV_CLIENT_SECRET,
                "scope": "root",
            },
            400,
            "invalid_scope",
        ),
    ],
    ids=["wrong_secret", "wrong_grant", "unknown_scope"],
)
async def test_token_endpoint_refuses_bad_requests(
    private_issuer: RunningIssuer, data: dict[str, str], status: int, error: str
) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{private_issuer.url}/token", data={"client_id": DEV_CLIENT_ID, **data}
        )
    assert (response.status_code, response.json()) == (status, {"error": error})


async def test_dev_token_cli_prints_a_token_the_verifier_accepts(
    private_issuer: RunningIssuer,
    verifier: TokenVerifier,
    cli_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    key_dir = str(private_issuer.dev.key_dir)
    argv = ["dev-token", "--tenant", "acme", "--scope", "api:read api:write", "--key-dir", key_dir]
    assert main([*argv, "--sub", "alice", "--alg", "ES256", "--ttl", "120"]) == 0
    claims = await verifier.verify(capsys.readouterr().out.strip())
    assert (claims.subject, claims.tenant) == ("alice", "acme")
    assert claims.scopes == frozenset({"api:read", "api:write"})
    assert claims.expires_at - claims.raw["iat"] == 120


async def test_dev_token_cli_admin_token_needs_no_tenant(
    private_issuer: RunningIssuer,
    verifier: TokenVerifier,
    cli_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    key_dir = str(private_issuer.dev.key_dir)
    assert main(["dev-token", "--admin", "--scope", "", "--key-dir", key_dir]) == 0
    claims = await verifier.verify(capsys.readouterr().out.strip())
    assert claims.tenant is None
    assert claims.scopes == frozenset({"platform:admin"})


def test_dev_token_cli_requires_a_tenant_or_admin(
    private_issuer: RunningIssuer, cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main(["dev-token", "--key-dir", str(private_issuer.dev.key_dir)])
    assert excinfo.value.code == 2
    assert "--tenant is required" in capsys.readouterr().err


def test_dev_token_cli_refuses_production(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("AUTH_ISSUER", "https://issuer.example")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@db.example:5432/tessera")
    monkeypatch.setenv("METRICS_TOKEN", "m" * 32)
    get_settings.cache_clear()
    try:
        assert main(["dev-token", "--tenant", "acme", "--key-dir", str(tmp_path)]) == 2
    finally:
        get_settings.cache_clear()
    assert "production" in capsys.readouterr().err
