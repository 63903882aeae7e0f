"""Bearer authentication: the caller (Principal) of a request, scopes, the admin plane."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.auth.tokens import Claims, TokenVerifier
from app.core.config import Settings
from app.core.errors import InsufficientScope, NotAuthenticated

# auto_error=False: the answer for a missing token is ours (problem+json, code
# not_authenticated), not FastAPI's; the scheme is declared so OpenAPI shows it on every route.
bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    bearerFormat="JWT",
    description="An access token (JWT) from the configured issuer (AUTH_ISSUER).",
)


# Who is calling: the verified token's subject, tenant slug (None for a platform token) and
# scopes, as the token verifier remembers them.
Principal = Claims


async def authenticate(verifier: TokenVerifier, authorization: str | None) -> Principal:
    """The caller of a request with this `Authorization` header value: 401 not_authenticated
    without a bearer token, 401 invalid_token (or 503 auth_unavailable) from the verifier."""
    token = bearer_token(authorization or "")
    if token is None:
        raise NotAuthenticated("This endpoint needs an `Authorization: Bearer <token>` header.")
    return await verifier.verify(token)


async def get_principal(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)] = None,
) -> Principal:
    """The admin plane's caller (the header is read here rather than from `_credentials`, so
    that the answer for a missing token is ours)."""
    return await authenticate(
        request.app.state.token_verifier, request.headers.get("authorization")
    )


def bearer_token(authorization: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value, else None."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if token and scheme.lower() == "bearer" else None


def check_scopes(principal: Principal, *any_of: str) -> None:
    """Pass when the principal holds at least one of `any_of`; else 403 insufficient_scope."""
    if principal.scopes.isdisjoint(any_of):
        raise InsufficientScope(f"This request needs one of the scopes: {', '.join(any_of)}.")


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def require_admin(request: Request, principal: PrincipalDep) -> Principal:
    """The admin plane: the admin scope, and no tenant claim (a tenant token never gets in)."""
    settings: Settings = request.app.state.settings
    check_scopes(principal, settings.auth_admin_scope)
    if principal.tenant is not None:
        raise InsufficientScope("A token that names a tenant cannot use the admin API.")
    return principal


AdminDep = Annotated[Principal, Depends(require_admin)]
