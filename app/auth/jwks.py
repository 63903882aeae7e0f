"""The issuer's signing keys: discovery, the JWKS document, refreshes (rate-limited), and
which keys are ever trusted (asymmetric ones only)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import httpx
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey

from app import metrics
from app.core.config import Settings
from app.core.errors import AuthUnavailable

logger = logging.getLogger("tessera.auth")

# Discovery and JWKS documents are small; a cap keeps a hostile endpoint from filling memory.
MAX_DOCUMENT_BYTES = 512 * 1024
# Keys are re-read this often even without an unknown kid, so a key the issuer withdrew stops
# working within minutes rather than at the next restart.
JWKS_MAX_AGE_SECONDS = 600.0
# While no key was ever fetched, retry the issuer this often (coalesced), so an issuer that
# comes up after the API does is picked up quickly.
INITIAL_RETRY_SECONDS = 1.0

# Only asymmetric key types are ever imported from a JWKS: an `oct` key there would let the
# holder of a public document mint tokens.
ASYMMETRIC_KEY_TYPES: dict[str, type[RSAKey] | type[ECKey] | type[OKPKey]] = {
    "RSA": RSAKey,
    "EC": ECKey,
    "OKP": OKPKey,
}


class JWKSClient:
    """The issuer's signing keys: fetched lazily, cached, refreshed on demand but rate-limited."""

    def __init__(self, settings: Settings, http_client: httpx.AsyncClient) -> None:
        self._issuer = settings.auth_issuer
        self._configured_jwks_url = settings.auth_jwks_url
        self._timeout = settings.auth_jwks_timeout_seconds
        self._cooldown = settings.auth_jwks_refresh_cooldown_seconds
        self._http = http_client
        self._jwks_url: str | None = settings.auth_jwks_url
        self._keys: dict[str | None, Key] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._generation = 0
        self._lock = asyncio.Lock()

    @property
    def has_keys(self) -> bool:
        return self._fetched_at is not None

    def get(self, kid: str | None) -> Key | None:
        if kid is None:
            # A token without `kid` is only unambiguous when the issuer publishes one key.
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    async def ensure_fresh(self) -> None:
        """Fetch on first use; re-read keys older than JWKS_MAX_AGE_SECONDS."""
        if self._fetched_at is None:
            await self.refresh()
            if self._fetched_at is None:
                raise AuthUnavailable(
                    "The token issuer's keys could not be fetched; retry shortly.",
                    headers={"Retry-After": "5"},
                )
        elif time.monotonic() - self._fetched_at > JWKS_MAX_AGE_SECONDS and not self._lock.locked():
            # One request pays for the re-read; the others keep using the current keys.
            await self.refresh()

    async def refresh(self) -> None:
        """Re-read the JWKS, at most once per cooldown; concurrent callers share one fetch."""
        seen = self._generation
        async with self._lock:
            if self._generation != seen:
                return  # another caller refreshed while this one waited
            now = time.monotonic()
            interval = self._cooldown if self._fetched_at is not None else INITIAL_RETRY_SECONDS
            if self._attempted_at is not None and now - self._attempted_at < interval:
                return
            self._attempted_at = now
            try:
                keys = await self._fetch_keys()
            except (httpx.HTTPError, ValueError) as exc:
                # Keys already held keep working: an issuer outage must not become ours.
                metrics.record_jwks_refresh("error")
                logger.warning(
                    "jwks fetch failed",
                    extra={"event_fields": {"error": type(exc).__name__, "reason": str(exc)}},
                )
                if self._configured_jwks_url is None:
                    self._jwks_url = None  # discover again next time, the document may have moved
                return
            self._keys = _keep_unchanged(self._keys, keys)
            self._fetched_at = time.monotonic()
            self._generation += 1
            metrics.record_jwks_refresh("success")
            logger.info("jwks fetched", extra={"event_fields": {"keys": len(keys)}})

    async def _fetch_keys(self) -> dict[str | None, Key]:
        if self._jwks_url is None:
            discovery = self._issuer.rstrip("/") + "/.well-known/openid-configuration"
            document = await self._get_json(discovery)
            jwks_uri = document.get("jwks_uri")
            if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
                raise ValueError("discovery document has no usable jwks_uri")
            self._jwks_url = jwks_uri
        return parse_jwks(await self._get_json(self._jwks_url))

    async def _get_json(self, url: str) -> dict[str, Any]:
        async with self._http.stream("GET", url, timeout=self._timeout) as response:
            response.raise_for_status()
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise ValueError(f"{url} answered more than {MAX_DOCUMENT_BYTES} bytes")
        document = json.loads(body)
        if not isinstance(document, dict):
            raise ValueError(f"{url} did not answer a JSON object")
        return document


def _keep_unchanged(
    held: dict[str | None, Key], fetched: dict[str | None, Key]
) -> dict[str | None, Key]:
    """The fetched keys, with the very objects already held wherever the issuer still
    publishes the same key under the same kid: a remembered token stays valid exactly as long
    as its key object is the one published (TokenVerifier._cache_get), so a routine re-read
    must not make every remembered token verify again."""
    kept = dict(fetched)
    for kid, key in fetched.items():
        old = held.get(kid)
        if old is not None and old.thumbprint() == key.thumbprint():
            kept[kid] = old
    return kept


def parse_jwks(document: Mapping[str, Any]) -> dict[str | None, Key]:
    """The usable signing keys of a JWKS, by kid; keys this service cannot use are skipped."""
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise ValueError("JWKS has no keys array")
    keys: dict[str | None, Key] = {}
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        key_class = ASYMMETRIC_KEY_TYPES.get(str(entry.get("kty")))
        if key_class is None:
            continue
        try:
            key: Key = key_class.import_key(entry)
        except (JoseError, ValueError, TypeError):
            logger.warning("jwks key skipped", extra={"event_fields": {"kid": entry.get("kid")}})
            continue
        kid = entry.get("kid")
        keys[kid if isinstance(kid, str) else None] = key
    return keys
