"""How the request path's connections answer what asyncpg raises: a connection the server
dropped is a `ConnectionLost` and a statement the tenant's timeout cancelled a
`StatementTimeout`, both 503, never a 500 (app/db/pool.py)."""

from __future__ import annotations

from typing import Any

from asyncpg.exceptions import InterfaceError, InternalClientError, QueryCanceledError

from app.core.errors import StatementTimeout


class ConnectionLost(ConnectionError):
    """The server dropped a connection under a statement, or asyncpg refused a statement on
    a connection it no longer holds idle (see TenantConnections._discard_dead): 503, never
    500."""


def idle_and_clean(raw: Any) -> bool:
    """After a COMMIT or ROLLBACK that succeeded: still open, and no transaction left on it
    (what asyncpg last heard from the server)."""
    return not raw.is_closed() and not raw.is_in_transaction()


def refused(exc: BaseException) -> bool:
    """asyncpg's own refusal of a statement (client side), as opposed to a server error."""
    return isinstance(exc, InterfaceError | InternalClientError)


def lost(exc: BaseException) -> ConnectionLost:
    return ConnectionLost(f"connection lost: {type(exc).__name__}: {exc}")


def cancelled() -> StatementTimeout:
    """For asyncpg's QueryCanceledError: the tenant's statement timeout (set in the pin)."""
    return StatementTimeout(
        "A database statement ran past the tenant's statement timeout; nothing changed."
    )


def answer_for(exc: BaseException, raw: Any) -> BaseException | None:
    """What the request answers instead of `exc`, raised by a statement on `raw` (an
    asyncpg connection): `ConnectionLost` for one refused on a connection the server
    dropped, `StatementTimeout` for one the tenant's timeout cancelled; None: `exc` itself."""
    if raw.is_closed() and refused(exc):
        return lost(exc)
    if isinstance(exc, QueryCanceledError):
        return cancelled()
    return None
