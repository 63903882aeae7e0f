"""TokenVerifier against the dev issuer served over real HTTP: what is accepted, what is not."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

from app.auth.jwks import INITIAL_RETRY_SECONDS, parse_jwks
from app.auth.tokens import MAX_TOKEN_BYTES, TokenVerifier
from app.core.config import Settings
from app.core.errors import AuthUnavailable, InvalidToken
from app.devissuer import DevIssuer
from tests.conftest import RunningIssuer, ServedApp

StartIssuer = Callable[[], RunningIssuer]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: Any) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def raw_jws(header: dict[str, Any], payload: dict[str, Any], key: RSAKey | ECKey | OKPKey) -> str:
    """Sign without any library header checks, so tests can forge what a library would refuse."""
    signing_input = f"{b64json(header)}.{b64json(payload)}"
    algorithm = JWSRegistry.algorithms[header["alg"]]
    return f"{signing_input}.{b64(algorithm.sign(signing_input.encode(), key))}"


def hs256(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
    signing_input = f"{b64json(header)}.{b64json(payload)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def claims_for(issuer: RunningIssuer, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer.url,
        "sub": "user-1",
        "aud": "tessera",
        "iat": now,
        "exp": now + 600,
        "tenant": "acme",
        "scope": "api:read",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def verifier_settings(issuer_url: str, **overrides: Any) -> Settings:
    return Settings(environment="test", auth_issuer=issuer_url, **overrides)


@pytest.fixture
def private_issuer(start_issuer: StartIssuer) -> RunningIssuer:
    return start_issuer()


@pytest.fixture
async def verifier(private_issuer: RunningIssuer) -> Any:
    v = TokenVerifier(verifier_settings(private_issuer.url))
    yield v
    await v.aclose()


Verifiers = Callable[[Settings], TokenVerifier]


@pytest.fixture
async def verifiers() -> AsyncIterator[Verifiers]:
    """`verifiers(settings)`: a TokenVerifier, closed when the test ends."""
    built: list[TokenVerifier] = []

    def build(settings: Settings) -> TokenVerifier:
        built.append(TokenVerifier(settings))
        return built[-1]

    yield build
    for built_verifier in built:
        await built_verifier.aclose()


def rsa_header(issuer: RunningIssuer, **extra: Any) -> dict[str, Any]:
    return {"alg": "RS256", "kid": issuer.dev.signing_key("RS256").kid, "typ": "JWT", **extra}


# --- accepted ---------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
async def test_valid_token_is_accepted(
    verifier: TokenVerifier, private_issuer: RunningIssuer, alg: Any
) -> None:
    token = private_issuer.dev.mint("user-1", tenant="acme", scopes="api:read api:write", alg=alg)
    claims = await verifier.verify(token)
    assert claims.subject == "user-1"
    assert claims.tenant == "acme"
    assert claims.scopes == frozenset({"api:read", "api:write"})
    assert claims.raw["iss"] == private_issuer.url


def eddsa_token(issuer: RunningIssuer, alg: str = "EdDSA") -> str:
    """A token signed with an Ed25519 key that the issuer publishes beside its own (the dev
    issuer signs with RS256 and ES256 only); `alg` EdDSA, or RFC 9864's Ed25519."""
    key = OKPKey.generate_key("Ed25519", auto_kid=True)
    issuer.dev._keys.append(key)  # in the served JWKS from now on
    return raw_jws({"alg": alg, "kid": key.kid, "typ": "JWT"}, claims_for(issuer), key)


async def test_an_eddsa_token_is_accepted(
    verifier: TokenVerifier, private_issuer: RunningIssuer
) -> None:
    claims = await verifier.verify(eddsa_token(private_issuer))
    assert (claims.subject, claims.tenant) == ("user-1", "acme")


async def test_an_ed25519_token_is_accepted_once_ed25519_is_allowed(
    start_issuer: StartIssuer,
    verifiers: Verifiers,
) -> None:
    issuer = start_issuer()
    default = verifiers(verifier_settings(issuer.url))
    allowing = verifiers(verifier_settings(issuer.url, auth_algorithms=["RS256", "Ed25519"]))
    token = eddsa_token(issuer, alg="Ed25519")
    with pytest.raises(InvalidToken):  # not in the default AUTH_ALGORITHMS
        await default.verify(token)
    assert (await allowing.verify(token)).subject == "user-1"


async def test_an_eddsa_token_is_refused_when_eddsa_is_not_allowed(
    start_issuer: StartIssuer,
    verifiers: Verifiers,
) -> None:
    issuer = start_issuer()
    verifier = verifiers(verifier_settings(issuer.url, auth_algorithms=["RS256", "ES256"]))
    with pytest.raises(InvalidToken):
        await verifier.verify(eddsa_token(issuer))


@pytest.mark.parametrize("audience", ["tessera", ["other-api", "tessera"]])
async def test_audience_as_string_or_list_is_accepted(
    verifier: TokenVerifier, private_issuer: RunningIssuer, audience: Any
) -> None:
    claims = await verifier.verify(private_issuer.dev.mint("u", audience=audience))
    assert claims.subject == "u"


async def test_scopes_from_scp_list(verifier: TokenVerifier, private_issuer: RunningIssuer) -> None:
    token = private_issuer.dev.mint("u", scopes=(), scp=["api:read", "platform:admin"])
    claims = await verifier.verify(token)
    assert claims.scopes == frozenset({"api:read", "platform:admin"})


async def test_token_without_tenant_has_tenant_none(
    verifier: TokenVerifier, private_issuer: RunningIssuer
) -> None:
    claims = await verifier.verify(private_issuer.dev.mint("u", tenant=None))
    assert claims.tenant is None


@pytest.mark.parametrize("typ", ["JWT", "jwt", "at+jwt", "AT+JWT", "application/at+jwt"])
async def test_access_token_types_are_accepted(
    verifier: TokenVerifier, private_issuer: RunningIssuer, typ: str
) -> None:
    key = private_issuer.dev.signing_key("RS256")
    token = raw_jws(rsa_header(private_issuer, typ=typ), claims_for(private_issuer), key)
    assert (await verifier.verify(token)).subject == "user-1"


async def test_rotated_key_is_accepted_after_one_refetch(
    start_issuer: StartIssuer, verifiers: Verifiers
) -> None:
    issuer = start_issuer()
    verifier = verifiers(verifier_settings(issuer.url, auth_jwks_refresh_cooldown_seconds=0.2))
    await verifier.verify(issuer.dev.mint("before"))
    assert issuer.jwks_fetches == 1
    await asyncio.sleep(0.25)  # past the cooldown that follows the first fetch
    new_kid = issuer.dev.rotate("RS256")
    token = issuer.dev.mint("after")
    assert json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))["kid"] == new_kid
    assert (await verifier.verify(token)).subject == "after"
    assert issuer.jwks_fetches == 2


async def test_a_remembered_token_stops_working_once_its_key_is_withdrawn(
    start_issuer: StartIssuer,
    verifiers: Verifiers,
) -> None:
    issuer = start_issuer()
    verifier = verifiers(verifier_settings(issuer.url, auth_jwks_refresh_cooldown_seconds=0.2))
    old = issuer.dev.mint("old")
    assert (await verifier.verify(old)).subject == "old"
    await asyncio.sleep(0.25)  # past the cooldown that follows the first fetch
    new_kid = issuer.dev.rotate("RS256")
    issuer.dev._keys = [k for k in issuer.dev._keys if k.kid == new_kid]  # withdraw the rest
    assert (await verifier.verify(issuer.dev.mint("new"))).subject == "new"  # refetches
    with pytest.raises(InvalidToken):
        await verifier.verify(old)


async def test_a_remembered_token_stays_remembered_when_a_re_read_keeps_its_key(
    start_issuer: StartIssuer,
    verifiers: Verifiers,
) -> None:
    """A routine JWKS re-read (a rotation that keeps the old key published) must not send
    every remembered token through signature verification again."""
    issuer = start_issuer()
    verifier = verifiers(verifier_settings(issuer.url, auth_jwks_refresh_cooldown_seconds=0.2))
    old = issuer.dev.mint("old")
    claims = await verifier.verify(old)
    await asyncio.sleep(0.25)  # past the cooldown that follows the first fetch
    issuer.dev.rotate("RS256")  # the old key stays published beside the new one
    assert (await verifier.verify(issuer.dev.mint("new"))).subject == "new"  # refetches
    assert issuer.jwks_fetches == 2
    assert verifier.remembered(old) is claims


async def test_jwks_url_setting_skips_discovery(
    start_issuer: StartIssuer, verifiers: Verifiers
) -> None:
    issuer = start_issuer()
    settings = verifier_settings(issuer.url, auth_jwks_url=f"{issuer.url}/jwks.json")
    verifier = verifiers(settings)
    await verifier.verify(issuer.dev.mint("u"))
    assert issuer.app.hits["/.well-known/openid-configuration"] == 0
    assert issuer.jwks_fetches == 1


async def test_a_token_seen_before_is_served_from_the_cache(
    verifier: TokenVerifier, private_issuer: RunningIssuer
) -> None:
    token = private_issuer.dev.mint("u")
    first = await verifier.verify(token)
    assert await verifier.verify(token) is first  # verifying again would build new claims
    assert verifier.remembered(token) is first


async def test_the_token_cache_keeps_the_most_recently_used_tokens_up_to_its_size(
    start_issuer: StartIssuer,
    verifiers: Verifiers,
) -> None:
    issuer = start_issuer()
    verifier = verifiers(verifier_settings(issuer.url, auth_token_cache_size=2))
    a, b, c = (issuer.dev.mint(subject) for subject in "abc")
    claims_a = await verifier.verify(a)
    await verifier.verify(b)
    assert await verifier.verify(a) is claims_a  # a is now the most recently used
    await verifier.verify(c)  # one too many: b, the least recently used, goes
    assert verifier.remembered(a) is claims_a
    assert verifier.remembered(b) is None
    assert verifier.remembered(c) is not None
    assert (await verifier.verify(b)).subject == "b"  # still valid: verified again


async def test_a_token_cache_size_of_zero_remembers_nothing(
    start_issuer: StartIssuer, verifiers: Verifiers
) -> None:
    issuer = start_issuer()
    verifier = verifiers(verifier_settings(issuer.url, auth_token_cache_size=0))
    token = issuer.dev.mint("u")
    first = await verifier.verify(token)
    assert verifier.remembered(token) is None
    second = await verifier.verify(token)
    assert second == first and second is not first


async def test_a_cached_token_is_not_served_past_its_expiry(
    start_issuer: StartIssuer, verifiers: Verifiers
) -> None:
    issuer = start_issuer()
    verifier = verifiers(verifier_settings(issuer.url, auth_leeway_seconds=0))
    token = issuer.dev.mint("u", ttl=1)
    await verifier.verify(token)
    await asyncio.sleep(2.1)
    with pytest.raises(InvalidToken):
        await verifier.verify(token)


# --- rejected ---------------------------------------------------------------------------

Forge = Callable[[RunningIssuer], str]


def _mint(**claims: Any) -> Forge:
    return lambda issuer: raw_jws(
        rsa_header(issuer), claims_for(issuer, **claims), issuer.dev.signing_key("RS256")
    )


def _with_header(**extra: Any) -> Forge:
    return lambda issuer: raw_jws(
        rsa_header(issuer, **extra), claims_for(issuer), issuer.dev.signing_key("RS256")
    )


def _alg_none(issuer: RunningIssuer) -> str:
    header = {"alg": "none", "kid": issuer.dev.signing_key("RS256").kid}
    return f"{b64json(header)}.{b64json(claims_for(issuer))}.{b64(b'x')}"


def _hs256_with_public_pem(issuer: RunningIssuer) -> str:
    pem = issuer.dev.signing_key("RS256").as_pem(private=False)
    header = {"alg": "HS256", "kid": issuer.dev.signing_key("RS256").kid}
    return hs256(header, claims_for(issuer), pem)


def _hs256_with_public_jwk(issuer: RunningIssuer) -> str:
    public = issuer.dev.signing_key("RS256").as_dict(private=False)
    header = {"alg": "HS256", "kid": public["kid"]}
    return hs256(header, claims_for(issuer), json.dumps(public).encode())


def _foreign_key_with_known_kid(issuer: RunningIssuer) -> str:
    foreign = RSAKey.generate_key(2048)
    return raw_jws(rsa_header(issuer), claims_for(issuer), foreign)


def _tampered_payload(issuer: RunningIssuer) -> str:
    header, _, signature = issuer.dev.mint("u", tenant="acme").split(".")
    forged = b64json(claims_for(issuer, tenant="globex"))
    return f"{header}.{forged}.{signature}"


def _oversize(issuer: RunningIssuer) -> str:
    # Validly signed: only its size makes it unacceptable.
    return issuer.dev.mint("u", padding="x" * MAX_TOKEN_BYTES)


def _unknown_kid(issuer: RunningIssuer) -> str:
    return raw_jws(
        {**rsa_header(issuer), "kid": "no-such-kid"},
        claims_for(issuer),
        issuer.dev.signing_key("RS256"),
    )


REJECTED: dict[str, Forge] = {
    "expired": _mint(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200),
    "not_yet_valid": _mint(nbf=int(time.time()) + 3600),
    "issued_in_the_future": _mint(iat=int(time.time()) + 3600),
    "wrong_issuer": _mint(iss="https://evil.example"),
    "issuer_prefix": lambda i: _mint(iss=i.url[:-1])(i),
    "issuer_suffix": lambda i: _mint(iss=i.url + "0")(i),
    "issuer_with_path": lambda i: _mint(iss=i.url + "/evil")(i),
    "issuer_as_list": lambda i: _mint(iss=[i.url])(i),
    "wrong_audience": _mint(aud="other-api"),
    "audience_list_without_ours": _mint(aud=["a", "b"]),
    "audience_prefix": _mint(aud="tesser"),
    "missing_exp": _mint(exp=None),
    "missing_sub": _mint(sub=None),
    "missing_aud": _mint(aud=None),
    "empty_sub": _mint(sub=""),
    "sub_not_a_string": _mint(sub=42),
    "exp_not_a_number": _mint(exp="tomorrow"),
    "tenant_not_a_string": _mint(tenant=["acme", "globex"]),
    "scope_not_a_string": _mint(scope={"api": "read"}),
    "alg_none": _alg_none,
    "hs256_with_public_pem": _hs256_with_public_pem,
    "hs256_with_public_jwk": _hs256_with_public_jwk,
    "foreign_key_known_kid": _foreign_key_with_known_kid,
    "tampered_payload": _tampered_payload,
    "unknown_kid": _unknown_kid,
    "oversize": _oversize,
    "crit_header": _with_header(crit=["exp"], exp=1),
    "typ_not_an_access_token": _with_header(typ="dpop+jwt"),
    "x5u_header": _with_header(x5u="https://evil.example/cert.pem"),
    "empty_signature": lambda i: i.dev.mint("u").rsplit(".", 1)[0] + ".",
    "malformed_empty": lambda i: "",
    "malformed_one_part": lambda i: "abc",
    "malformed_two_parts": lambda i: "abc.def",
    "malformed_dots": lambda i: "..",
    "malformed_garbage": lambda i: "a.b.c",
    "malformed_header_not_json": lambda i: f"{b64(b'{nope')}.{b64json({})}.{b64(b'sig')}",
    "malformed_header_a_list": lambda i: f"{b64json([1])}.{b64json({})}.{b64(b'sig')}",
    "malformed_payload": lambda i: f"{b64json(rsa_header(i))}.!!!.{b64(b'sig')}",
    "malformed_non_ascii": lambda i: "é.é.é",
    "jwe_five_parts": lambda i: "a.b.c.d.e",
}


@pytest.mark.parametrize("forge", REJECTED.values(), ids=REJECTED.keys())
async def test_invalid_token_is_rejected(
    verifier: TokenVerifier, private_issuer: RunningIssuer, forge: Forge
) -> None:
    token = forge(private_issuer)
    with pytest.raises(InvalidToken) as excinfo:
        await verifier.verify(token)
    assert excinfo.value.status == 401
    assert excinfo.value.code == "invalid_token"
    assert excinfo.value.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    if token:
        assert token not in excinfo.value.detail


@pytest.fixture
def jku_server() -> Iterator[tuple[ServedApp, list[str]]]:
    """A server the attacker controls: it records every request it receives."""
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    server = ServedApp()
    server.start(app)
    yield server, seen
    server.stop()


@pytest.mark.parametrize("header_name", ["jwk", "jku"])
async def test_key_bearing_headers_are_refused_without_any_outbound_call(
    start_issuer: StartIssuer,
    jku_server: tuple[ServedApp, list[str]],
    header_name: str,
    verifiers: Verifiers,
) -> None:
    issuer = start_issuer()
    attacker = RSAKey.generate_key(2048, auto_kid=True)
    header: dict[str, Any] = {"alg": "RS256", "kid": attacker.kid}
    if header_name == "jwk":
        header["jwk"] = attacker.as_dict(private=False)
    else:
        header["jku"] = f"{jku_server[0].url}/jwks.json"
    token = raw_jws(header, claims_for(issuer), attacker)
    verifier = verifiers(verifier_settings(issuer.url))
    with pytest.raises(InvalidToken):
        await verifier.verify(token)
    assert issuer.requests == 0
    assert jku_server[1] == []


async def test_a_storm_of_unknown_kids_costs_at_most_three_jwks_fetches(
    verifier: TokenVerifier, private_issuer: RunningIssuer
) -> None:
    foreign = RSAKey.generate_key(2048)
    tokens = [
        raw_jws({"alg": "RS256", "kid": secrets.token_hex(8)}, claims_for(private_issuer), foreign)
        for _ in range(100)
    ]
    results = await asyncio.gather(*(verifier.verify(t) for t in tokens), return_exceptions=True)
    assert all(isinstance(r, InvalidToken) for r in results)
    for token in tokens[:20]:  # and one at a time, after the storm
        with pytest.raises(InvalidToken):
            await verifier.verify(token)
    assert 1 <= private_issuer.jwks_fetches <= 3


async def test_cached_keys_keep_working_when_the_issuer_goes_down(
    start_issuer: StartIssuer,
    verifiers: Verifiers,
) -> None:
    issuer = start_issuer()
    verifier = verifiers(verifier_settings(issuer.url, auth_jwks_refresh_cooldown_seconds=0))
    await verifier.verify(issuer.dev.mint("before"))
    issuer.stop()
    fresh = issuer.dev.mint("during-outage", alg="ES256")
    assert (await verifier.verify(fresh)).subject == "during-outage"
    with pytest.raises(InvalidToken):  # an unknown kid is still a 401, not a 503
        await verifier.verify(_unknown_kid(issuer))


async def test_never_reachable_issuer_raises_auth_unavailable(
    issuer: RunningIssuer, verifiers: Verifiers
) -> None:
    closed = ServedApp()  # bound, never served, then closed: connections are refused
    url = closed.url
    closed.stop()
    verifier = verifiers(verifier_settings(url, auth_jwks_timeout_seconds=1))
    token = raw_jws(
        {"alg": "RS256", "kid": "k"},
        {"iss": url, "sub": "u", "aud": "tessera", "exp": int(time.time()) + 60},
        issuer.dev.signing_key("RS256"),
    )
    with pytest.raises(AuthUnavailable) as excinfo:
        await verifier.verify(token)
    assert (excinfo.value.status, excinfo.value.code) == (503, "auth_unavailable")


async def test_an_issuer_that_comes_up_after_the_api_is_picked_up(
    tmp_path: Path, verifiers: Verifiers
) -> None:
    server = ServedApp()  # the port is bound but nothing listens yet: connections are refused
    dev = DevIssuer(Settings(environment="test"), key_dir=tmp_path, issuer=server.url)
    verifier = verifiers(verifier_settings(server.url, auth_jwks_timeout_seconds=1))
    try:
        token = dev.mint("u")
        with pytest.raises(AuthUnavailable):
            await verifier.verify(token)
        server.start(dev.asgi_app())
        await asyncio.sleep(INITIAL_RETRY_SECONDS + 0.1)
        assert (await verifier.verify(token)).subject == "u"
    finally:
        server.stop()


def test_symmetric_and_encryption_keys_in_a_jwks_are_never_used() -> None:
    rsa = RSAKey.generate_key(2048, auto_kid=True)
    document = {
        "keys": [
            {"kty": "oct", "kid": "hmac", "k": b64(b"secret")},
            {**rsa.as_dict(private=False), "kid": "enc", "use": "enc"},
            {"kty": "RSA", "kid": "broken", "n": "x"},
            {**rsa.as_dict(private=False), "kid": "good"},
        ]
    }
    assert set(parse_jwks(document)) == {"good"}
