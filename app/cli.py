"""`tessera` console script: serve, migrate, tenants, dev-token, dev-issuer."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from app.core.config import get_settings

Command = Callable[[argparse.Namespace], int]


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = get_settings()  # fail fast, one line, before uvicorn starts
    uvicorn.run(
        "app.main:app",
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=settings.log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=args.graceful_timeout,
        proxy_headers=True,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tessera", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API with uvicorn")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--graceful-timeout", type=int, default=20)
    serve.set_defaults(func=_serve)

    for register in _registrars():
        register(sub)
    return parser


def _registrars() -> list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]]:
    """Each feature module adds its own subcommands, so this file stays a thin router."""
    from app.commands import registrars

    return registrars()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Command = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
