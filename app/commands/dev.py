"""`tessera dev-issuer` and `tessera dev-token`: the development issuer from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.core.config import get_settings
from app.devissuer import (
    DEFAULT_KEY_DIR,
    DEFAULT_TTL_SECONDS,
    SIGNING_ALGORITHMS,
    DevIssuer,
    DevIssuerRefused,
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    issuer = sub.add_parser("dev-issuer", help="serve the development token issuer")
    issuer.add_argument("--host", default="127.0.0.1")
    issuer.add_argument("--port", type=int, default=8001)
    issuer.add_argument("--key-dir", type=Path, default=DEFAULT_KEY_DIR)
    issuer.set_defaults(func=_dev_issuer)

    token = sub.add_parser("dev-token", help="print a token signed by the development issuer")
    token.add_argument("--tenant", help="tenant slug (the AUTH_TENANT_CLAIM claim)")
    token.add_argument("--scope", default="api:read api:write", help="space-separated scopes")
    token.add_argument("--admin", action="store_true", help="add AUTH_ADMIN_SCOPE")
    token.add_argument("--ttl", type=int, default=DEFAULT_TTL_SECONDS, help="lifetime in seconds")
    token.add_argument("--sub", default="dev-user", help="the token's subject")
    token.add_argument("--alg", choices=SIGNING_ALGORITHMS, default="RS256")
    token.add_argument("--key-dir", type=Path, default=DEFAULT_KEY_DIR)
    token.set_defaults(func=_dev_token, parser=token)


def _dev_issuer(args: argparse.Namespace) -> int:
    import uvicorn

    settings = get_settings()
    try:
        issuer = DevIssuer(settings, key_dir=args.key_dir)
    except DevIssuerRefused as exc:
        print(f"dev-issuer: {exc}", file=sys.stderr)
        return 2
    print(f"dev-issuer: iss={issuer.issuer} keys={args.key_dir}", file=sys.stderr)
    uvicorn.run(issuer.asgi_app(), host=args.host, port=args.port, log_level="warning")
    return 0


def _dev_token(args: argparse.Namespace) -> int:
    settings = get_settings()
    if not args.tenant and not args.admin:
        args.parser.error("--tenant is required unless --admin is given")
    if args.ttl <= 0:
        args.parser.error("--ttl must be positive")
    scopes = args.scope.split()
    if args.admin and settings.auth_admin_scope not in scopes:
        scopes.append(settings.auth_admin_scope)
    try:
        issuer = DevIssuer(settings, key_dir=args.key_dir)
    except DevIssuerRefused as exc:
        print(f"dev-token: {exc}", file=sys.stderr)
        return 2
    print(issuer.mint(args.sub, tenant=args.tenant, scopes=scopes, ttl=args.ttl, alg=args.alg))
    return 0
