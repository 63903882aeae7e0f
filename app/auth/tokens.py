"""Bearer-token verification: the one place that decides whether a JWT is trusted (joserfc)."""

from __future__ import annotations

import binascii
import copy
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import httpx
from joserfc import jwt
from joserfc.errors import ExpiredTokenError, JoseError
from joserfc.jwk import Key
from joserfc.jws import JWSRegistry
from joserfc.util import json_b64decode

from app.auth.jwks import JWKSClient
from app.core.config import Settings
from app.core.errors import InvalidToken

logger = logging.getLogger("tessera.auth")

# A bearer token is a header line; anything bigger is an attack or a mistake, and is refused
# before a byte of it is decoded.
MAX_TOKEN_BYTES = 8 * 1024
# RFC 9068 names `at+jwt`; plain `JWT` is what most issuers still send.
ACCEPTED_TYPES = frozenset({"jwt", "at+jwt", "application/at+jwt"})
# `crit` asks us to understand extensions we do not; the others point at keys chosen by the
# token's author. A token carrying any of them is refused outright: nothing is followed.
REFUSED_HEADERS = frozenset({"crit", "jku", "x5u", "jwk", "x5c"})


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified token says about its bearer."""

    subject: str
    tenant: str | None
    scopes: frozenset[str]
    expires_at: float
    issued_at: float | None  # `iat`, when the token has one
    raw: Mapping[str, Any] = field(compare=False, hash=False, repr=False)


class TokenVerifier:
    """Verifies bearer JWTs against the configured issuer; built once per process."""

    def __init__(self, settings: Settings, http_client: httpx.AsyncClient | None = None) -> None:
        self._settings = settings
        self._owns_client = http_client is None
        self._http = http_client or httpx.AsyncClient(
            timeout=settings.auth_jwks_timeout_seconds, follow_redirects=False
        )
        self._jwks = JWKSClient(settings, self._http)
        self._algorithms = frozenset(settings.auth_algorithms)
        # strict_check_header=False: issuers add harmless private header fields (Azure's `x5t`
        # variants, vendor hints); what matters is refused in _check_header.
        self._registry = _TokenRegistry(
            algorithms=settings.auth_algorithms, strict_check_header=False
        )
        self._claims_registry = jwt.JWTClaimsRegistry(
            leeway=settings.auth_leeway_seconds,
            iss={"essential": True, "value": settings.auth_issuer},
            aud={"essential": True, "value": settings.auth_audience},
            exp={"essential": True},
            sub={"essential": True},
        )
        # token -> (claims, kid, key), by the token's exact text, until it expires, at most
        # AUTH_TOKEN_CACHE_SIZE of them: a remembered token stays valid only while the key
        # that verified it is still the one the issuer publishes under its kid.
        self._cache: OrderedDict[str, tuple[Claims, str | None, Key]] = OrderedDict()
        self._cache_size = settings.auth_token_cache_size

    async def verify(self, token: str) -> Claims:
        """The claims of `token`, or InvalidToken / AuthUnavailable."""
        if len(token) > MAX_TOKEN_BYTES:
            raise InvalidToken(f"The bearer token is longer than {MAX_TOKEN_BYTES} bytes.")
        cached = self._cache_get(token)
        if cached is not None:
            return cached
        if not token.isascii():
            raise InvalidToken("The bearer token is malformed.")
        header = _check_header(_read_header(token), self._algorithms)
        kid = header.get("kid")
        key = await self._key_for(kid)
        claims = self._decode(token, key)
        self._cache_put(token, (claims, kid, key))
        return claims

    def remembered(self, token: str) -> Claims | None:
        """The claims of a token verified before, still unexpired and still signed by a key
        the issuer publishes; None for any other token (verify() tells why)."""
        if len(token) > MAX_TOKEN_BYTES:
            return None
        return self._cache_get(token)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._http.aclose()

    async def _key_for(self, kid: object) -> Key:
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("The bearer token's kid is not a string.")
        await self._jwks.ensure_fresh()
        key = self._jwks.get(kid)
        if key is None:
            # A new kid usually means the issuer rotated its keys: look once (rate-limited).
            await self._jwks.refresh()
            key = self._jwks.get(kid)
        if key is None:
            raise InvalidToken("The bearer token is signed with a key the issuer does not publish.")
        return key

    def _decode(self, token: str, key: Key) -> Claims:
        try:
            decoded = jwt.decode(token, key, registry=self._registry)
            self._claims_registry.validate(decoded.claims)
        except ExpiredTokenError:
            raise InvalidToken("The bearer token has expired.") from None
        except JoseError as exc:
            # joserfc's descriptions name the claim or check that failed, never a value.
            reason = exc.description or exc.error.replace("_", " ")
            raise InvalidToken(f"The bearer token is not valid: {reason}.") from None
        except (ValueError, TypeError):
            raise InvalidToken("The bearer token is malformed.") from None
        return self._claims_from(decoded.claims)

    def _claims_from(self, raw: dict[str, Any]) -> Claims:
        subject = raw["sub"]
        if not isinstance(subject, str) or not subject:
            raise InvalidToken("The bearer token's sub claim is not a string.")
        tenant = raw.get(self._settings.auth_tenant_claim)
        if tenant is not None and (not isinstance(tenant, str) or not tenant):
            raise InvalidToken("The bearer token's tenant claim is not a string.")
        return Claims(
            subject=subject,
            tenant=tenant,
            scopes=_scopes(raw),
            expires_at=_numeric_date(raw, "exp"),
            issued_at=None if raw.get("iat") is None else _numeric_date(raw, "iat"),
            raw=MappingProxyType(raw),
        )

    def _cache_get(self, token: str) -> Claims | None:
        entry = self._cache.get(token)
        if entry is None:
            return None
        claims, kid, key = entry
        expired = time.time() >= claims.expires_at + self._settings.auth_leeway_seconds
        if expired or self._jwks.get(kid) is not key:  # expired, or its key was withdrawn
            del self._cache[token]
            return None
        self._cache.move_to_end(token)
        return claims

    def _cache_put(self, token: str, entry: tuple[Claims, str | None, Key]) -> None:
        if self._cache_size == 0:
            return
        self._cache[token] = entry
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)


def _without_warning(name: str) -> Any:
    """joserfc's model of `name`, minus its SecurityWarning: a copy, the registry's own is
    left as it is."""
    quiet = copy.copy(JWSRegistry.algorithms[name])
    quiet.security_warning = None
    return quiet


class _TokenRegistry(JWSRegistry):
    """joserfc's registry, with `EdDSA` accepted without a warning. RFC 9864 deprecates the
    name in favour of `Ed25519`, and joserfc warns on every use, but issuers still sign with
    it and the operator chose it in AUTH_ALGORITHMS (it is in the default): a warning per
    verified token is noise in the logs, and an error wherever warnings are errors."""

    algorithms = {**JWSRegistry.algorithms, "EdDSA": _without_warning("EdDSA")}


def _read_header(token: str) -> dict[str, Any]:
    """The JOSE header, read before any key is looked up (it names the kid and alg)."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise InvalidToken("The bearer token is not a signed JWT (header.payload.signature).")
    try:
        header = json_b64decode(parts[0].encode())
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise InvalidToken("The bearer token's header is malformed.") from None
    if not isinstance(header, dict):
        raise InvalidToken("The bearer token's header is malformed.")
    return header


def _check_header(header: dict[str, Any], algorithms: frozenset[str]) -> dict[str, Any]:
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in algorithms:
        raise InvalidToken("The bearer token's algorithm is not accepted.")
    refused = REFUSED_HEADERS.intersection(header)
    if refused:
        raise InvalidToken(f"The bearer token carries a refused header ({min(refused)}).")
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.lower() not in ACCEPTED_TYPES):
        raise InvalidToken("The bearer token's typ is not an access token type.")
    return header


def _numeric_date(raw: Mapping[str, Any], name: str) -> float:
    """A time claim joserfc has validated as a NumericDate, as a float; an integer too large
    for one is refused rather than answered with a 500."""
    try:
        return float(raw[name])
    except OverflowError:
        raise InvalidToken(f"The bearer token's {name} claim is out of range.") from None


def _scopes(raw: Mapping[str, Any]) -> frozenset[str]:
    """Scopes from `scope` (space-separated, RFC 8693) and/or `scp` (a list, or a string)."""
    scopes: set[str] = set()
    for name in ("scope", "scp"):
        value = raw.get(name)
        if value is None:
            continue
        if isinstance(value, str):
            scopes.update(value.split())
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            scopes.update(value)
        else:
            raise InvalidToken(f"The bearer token's {name} claim is malformed.")
    return frozenset(scopes)
