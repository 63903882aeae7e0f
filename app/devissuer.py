"""Development token issuer: discovery, JWKS and client-credentials tokens for local work and tests.

Never for production: it refuses to start when ENVIRONMENT=production. The dev client is
`tessera-dev` / `tessera-dev-secret` (form fields or HTTP Basic).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs

from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.core.config import Settings

DEFAULT_KEY_DIR = Path(".tessera/dev-issuer")
DEV_CLIENT_ID = "tessera-dev"
DEV_CLIENT_SECRET = "tessera-dev-secret"  # noqa: S105 - documented development credential
DEFAULT_SCOPES = ("api:read", "api:write")
DEFAULT_TTL_SECONDS = 3600
MAX_TTL_SECONDS = 7 * 24 * 3600
SigningAlgorithm = Literal["RS256", "ES256"]
SIGNING_ALGORITHMS: tuple[SigningAlgorithm, ...] = ("RS256", "ES256")
_KEYS_FILE = "keys.json"


class DevIssuerRefused(RuntimeError):
    """The development issuer was asked to run where it must not (production)."""


class DevIssuer:
    """Signs tokens with keys kept under `key_dir`, so tokens survive restarts."""

    def __init__(
        self,
        settings: Settings,
        *,
        key_dir: Path = DEFAULT_KEY_DIR,
        issuer: str | None = None,
    ) -> None:
        if settings.environment == "production":
            raise DevIssuerRefused("the development issuer never runs with ENVIRONMENT=production")
        self.settings = settings
        self.issuer = issuer or settings.auth_issuer
        self.key_dir = key_dir
        self._keys: list[RSAKey | ECKey] = _load_or_create_keys(key_dir)

    def signing_key(self, alg: SigningAlgorithm = "RS256") -> RSAKey | ECKey:
        """The newest key for `alg` (rotation appends, so the last one signs)."""
        for key in reversed(self._keys):
            if key.alg == alg:
                return key
        raise ValueError(f"no {alg} key")

    def rotate(self, alg: SigningAlgorithm = "RS256") -> str:
        """Add a new signing key for `alg` (the old ones stay published); return its kid."""
        key = _generate(alg)
        self._keys.append(key)
        _write_keys(self.key_dir, self._keys)
        assert key.kid is not None
        return key.kid

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.as_dict(private=False) for key in self._keys]}

    def discovery(self) -> dict[str, Any]:
        base = self.issuer.rstrip("/")
        return {
            "issuer": self.issuer,
            "jwks_uri": f"{base}/jwks.json",
            "token_endpoint": f"{base}/token",
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "id_token_signing_alg_values_supported": list(SIGNING_ALGORITHMS),
            "scopes_supported": [*DEFAULT_SCOPES, self.settings.auth_admin_scope],
        }

    def mint(
        self,
        subject: str,
        tenant: str | None = None,
        scopes: Iterable[str] | str = DEFAULT_SCOPES,
        ttl: int = DEFAULT_TTL_SECONDS,
        alg: SigningAlgorithm = "RS256",
        audience: str | list[str] | None = None,
        **claims: Any,
    ) -> str:
        """A signed access token; `claims` add to or override the standard ones."""
        now = int(time.time())
        scope_list = scopes.split() if isinstance(scopes, str) else list(scopes)
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience if audience is not None else self.settings.auth_audience,
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
        }
        if scope_list:
            payload["scope"] = " ".join(scope_list)
        if tenant is not None:
            payload[self.settings.auth_tenant_claim] = tenant
        payload.update(claims)
        key = self.signing_key(alg)
        header = {"alg": alg, "kid": key.kid, "typ": "at+jwt"}
        return jwt.encode(header, payload, key, algorithms=[alg])

    def asgi_app(self) -> Starlette:
        """Discovery, JWKS and `POST /token` (grant_type=client_credentials)."""

        async def discovery(request: Request) -> JSONResponse:
            return JSONResponse(self.discovery())

        async def jwks(request: Request) -> JSONResponse:
            return JSONResponse(self.jwks(), headers={"Cache-Control": "max-age=300"})

        async def token(request: Request) -> JSONResponse:
            return self._token_response(request.headers, await request.body())

        return Starlette(
            routes=[
                Route("/.well-known/openid-configuration", discovery),
                Route("/jwks.json", jwks),
                Route("/token", token, methods=["POST"]),
            ]
        )

    def _token_response(self, headers: Mapping[str, str], body: bytes) -> JSONResponse:
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        client_id, client_secret = _client_credentials(headers, form)
        if not (
            hmac.compare_digest(client_id.encode(), DEV_CLIENT_ID.encode())
            and hmac.compare_digest(client_secret.encode(), DEV_CLIENT_SECRET.encode())
        ):
            return _oauth_error(401, "invalid_client", {"WWW-Authenticate": "Basic"})
        if form.get("grant_type") != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type")
        scopes = form.get("scope", " ".join(DEFAULT_SCOPES)).split()
        allowed = {*DEFAULT_SCOPES, self.settings.auth_admin_scope}
        if not set(scopes) <= allowed:
            return _oauth_error(400, "invalid_scope")
        try:
            ttl = min(int(form.get("ttl", DEFAULT_TTL_SECONDS)), MAX_TTL_SECONDS)
        except ValueError:
            return _oauth_error(400, "invalid_request")
        # `tenant` and `sub` are dev conveniences: a real issuer takes them from the client.
        access_token = self.mint(
            form.get("sub", client_id), tenant=form.get("tenant") or None, scopes=scopes, ttl=ttl
        )
        return JSONResponse(
            {
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": ttl,
                "scope": " ".join(scopes),
            },
            headers={"Cache-Control": "no-store"},
        )


def _client_credentials(headers: Mapping[str, str], form: Mapping[str, str]) -> tuple[str, str]:
    """From HTTP Basic (client_secret_basic) or the form (client_secret_post)."""
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return "", ""
        return user, password
    return form.get("client_id", ""), form.get("client_secret", "")


def _oauth_error(status: int, error: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def _generate(alg: SigningAlgorithm) -> RSAKey | ECKey:
    parameters: dict[str, Any] = {"alg": alg, "use": "sig"}
    key: RSAKey | ECKey
    if alg == "RS256":
        key = RSAKey.generate_key(2048, parameters=parameters, auto_kid=True)  # type: ignore[arg-type]
    else:
        key = ECKey.generate_key("P-256", parameters=parameters, auto_kid=True)  # type: ignore[arg-type]
    return key


def _load_or_create_keys(key_dir: Path) -> list[RSAKey | ECKey]:
    path = key_dir / _KEYS_FILE
    if not path.exists():
        _write_keys(key_dir, [_generate(alg) for alg in SIGNING_ALGORITHMS], exclusive=True)
    key_set = KeySet.import_key_set(json.loads(path.read_text()))
    keys = [key for key in key_set.keys if isinstance(key, RSAKey | ECKey)]
    missing = [alg for alg in SIGNING_ALGORITHMS if all(key.alg != alg for key in keys)]
    if missing:
        raise ValueError(f"{path} lacks a key for {', '.join(missing)}; delete it to regenerate")
    return keys


def _write_keys(key_dir: Path, keys: list[RSAKey | ECKey], *, exclusive: bool = False) -> None:
    """Write private keys readable by the owner only; atomically, so a reader never sees half.

    With `exclusive`, a file another process created first wins (both then sign with it).
    """
    key_dir.mkdir(parents=True, exist_ok=True)
    path = key_dir / _KEYS_FILE
    tmp = key_dir / f".{_KEYS_FILE}.{os.getpid()}.{uuid.uuid4().hex}"
    document = {"keys": [key.as_dict(private=True) for key in keys]}
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(document, handle, indent=2)
    try:
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
        else:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
