"""The one place that writes problem+json (RFC 9457): for Tessera's errors, FastAPI's
validation errors, Starlette's HTTP errors, and whatever else a request raised."""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import iter_route_contexts
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import compile_path

from app.core.context import request_id_var
from app.core.errors import TesseraError

logger = logging.getLogger("tessera.errors")

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://tessera.dev/problems/"

_STATUS_CODES = {
    400: "bad_request",
    401: "not_authenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    412: "precondition_failed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    503: "service_unavailable",
}


def problem_body(
    status: int, code: str, detail: str, *, title: str | None = None, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title or _phrase(status),
        "status": status,
        "detail": detail,
        "code": code,
    }
    request_id = request_id_var.get()
    if request_id:
        body["request_id"] = request_id
    body.update(extra)
    return body


def problem_response(
    status: int,
    code: str,
    detail: str,
    *,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    body = problem_body(status, code, detail, title=title, **extra)
    return Response(
        content=json.dumps(body, separators=(",", ":"), default=str).encode(),
        status_code=status,
        media_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


# asyncpg's exceptions that mean the server went away or refused us, by class name (the
# request path meets them raw through TenantSession, and wrapped through SQLAlchemy).
_UNREACHABLE_DRIVER_ERRORS = frozenset(
    {
        "ConnectionDoesNotExistError",
        "CannotConnectNowError",
        "ConnectionFailureError",
        "ConnectionRejectionError",
        "TooManyConnectionsError",
        "AdminShutdownError",
        "CrashShutdownError",
    }
)


def is_database_unavailable(exc: BaseException) -> bool:
    """True when `exc` means PostgreSQL could not be reached (not a bad query)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:  # the exception and its causes
        seen.add(id(current))
        if isinstance(current, sa_exc.TimeoutError):  # pool checkout timed out
            return True
        if isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, OSError | TimeoutError | ConnectionError):
            return True
        name = type(current).__name__
        if name in _UNREACHABLE_DRIVER_ERRORS:
            return True
        if name == "InterfaceError" and "connection is closed" in str(current):
            return True
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return False


def _sanitize_loc(loc: Any) -> list[Any]:
    return [part if isinstance(part, int | str) else str(part) for part in loc]


def error_response(exc: TesseraError) -> Response:
    """The problem+json answer to one of our errors."""
    return problem_response(
        exc.status, exc.code, exc.detail, title=exc.title, headers=exc.headers, **exc.extra
    )


async def _tessera_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TesseraError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    code = _STATUS_CODES.get(status, _phrase(status).lower().replace(" ", "_"))
    detail = exc.detail if isinstance(exc.detail, str) else _phrase(status)
    if status == 404 and detail == "Not Found":
        detail = f"No route matches {request.method} {request.url.path}."
    elif status == 405 and detail == "Method Not Allowed":
        detail = f"{request.method} is not allowed on {request.url.path}."
    headers = dict(exc.headers) if exc.headers else {}
    if status == 405:
        # The router names only the methods of the first route that matched the path; RFC 9110
        # asks for every method the resource supports, OPTIONS included.
        headers["Allow"] = ", ".join(allowed_methods(request))
        if request.method == "OPTIONS":  # RFC 9110 section 9.3.7: what the resource supports
            return Response(status_code=200, headers=headers)
    return problem_response(status, code, detail, headers=headers or None)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app answers on the request's path, and OPTIONS."""
    methods = {"OPTIONS"}
    for route in iter_route_contexts(request.app.routes):
        if route.path_format is not None and route.methods:
            pattern, _, _ = compile_path(route.path_format)
            if pattern.match(request.scope["path"]):
                methods.update(route.methods)
    return sorted(methods)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    raw = exc.errors()
    if any(err.get("type") == "json_invalid" for err in raw):
        return problem_response(
            400,
            "malformed_json",
            "The request body is not valid JSON.",
            errors=[{"loc": ["body"], "msg": "JSON decode error", "type": "json_invalid"}],
        )
    errors = [
        {
            "loc": _sanitize_loc(err.get("loc", ())),
            "msg": str(err.get("msg", "")),
            "type": str(err.get("type", "")),
        }
        for err in raw
    ]
    return problem_response(
        422, "validation_error", "The request is not valid; see errors.", errors=errors
    )


async def _unhandled_error(request: Request, exc: Exception) -> Response:
    return unhandled_error_response(exc)


def unhandled_error_response(exc: BaseException) -> Response:
    """503 when the database is unreachable, else a generic 500 that names only the request id."""
    if is_database_unavailable(exc):
        logger.warning("database unavailable: %s", type(exc).__name__)
        return problem_response(
            503,
            "database_unavailable",
            "The database is unavailable; retry shortly.",
            headers={"Retry-After": "1"},
        )
    logger.error("unhandled error", exc_info=exc)
    return problem_response(
        500,
        "internal_error",
        f"Something failed on our side. Quote request id {request_id_var.get()} to support.",
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(TesseraError, _tessera_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    # Database faults are answered inside the app (503); anything else unhandled is answered
    # by the request middleware, so the response still carries X-Request-ID.
    for exc_type in (sa_exc.DBAPIError, sa_exc.TimeoutError, OSError, TimeoutError):
        app.add_exception_handler(exc_type, _unhandled_error)
