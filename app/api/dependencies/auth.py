"""Bearer authentication as FastAPI dependencies: the caller's Principal, scopes, admin plane."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.core.config import Settings
from app.core.errors import InsufficientScope, NotAuthenticated
from app.core.security import TokenVerifier

# auto_error=False: the answer for a missing token is ours (problem+json, code
# not_authenticated), not FastAPI's; the scheme is declared so OpenAPI shows it on every route.
bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    bearerFormat="JWT",
    description="An access token (JWT) from the configured issuer (AUTH_ISSUER).",
)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's subject, its tenant slug (None for a platform token), scopes."""

    subject: str
    tenant: str | None
    scopes: frozenset[str]


async def get_principal(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)] = None,
) -> Principal:
    """Verify the request's bearer token once; later calls in the same request reuse it.

    The header is read here rather than from `_credentials` so that a direct call
    (`await get_principal(request)`, as other dependencies do) behaves the same.
    """
    cached = getattr(request.state, "principal", None)
    if isinstance(cached, Principal):
        return cached
    token = _bearer_token(request)
    verifier: TokenVerifier = request.app.state.token_verifier
    claims = await verifier.verify(token)
    principal = Principal(subject=claims.subject, tenant=claims.tenant, scopes=claims.scopes)
    request.state.principal = principal
    return principal


def _bearer_token(request: Request) -> str:
    token = bearer_token(request.headers.get("authorization", ""))
    if token is None:
        raise NotAuthenticated("This endpoint needs an `Authorization: Bearer <token>` header.")
    return token


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
