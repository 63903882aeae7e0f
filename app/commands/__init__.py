"""Subcommands of the `tessera` CLI, one module per feature."""

from __future__ import annotations

import argparse
from collections.abc import Callable

Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def registrars() -> list[Registrar]:
    from app.commands import dev, serve, tenancy

    return [serve.register, tenancy.register, dev.register]
