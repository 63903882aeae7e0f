"""Pure ASGI middleware: request id, body-size limit, access log, last-resort error answer."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.problems import problem_response, unhandled_error_response
from app.core.context import request_id_var, tenant_keys_var, tenant_var
from app.metrics import record_tenant_request

access_logger = logging.getLogger("tessera.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")

# Key in the ASGI scope's request state for headers a dependency wants on the response.
# The middleware adds them at response start, so they reach error responses (404, 422, 500)
# too, which FastAPI's `response: Response` parameter does not.
RESPONSE_HEADERS_STATE_KEY = "tessera_response_headers"


def add_response_headers(request: Request | Scope, headers: Mapping[str, str]) -> None:
    """Put `headers` on this request's response, whatever ends up answering it."""
    scope = request.scope if isinstance(request, Request) else request
    state = scope.setdefault("state", {})
    state.setdefault(RESPONSE_HEADERS_STATE_KEY, {}).update(headers)


class PayloadTooLarge(HTTPException):
    """Raised from `receive` once a streamed body passes the limit (FastAPI re-raises it)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body exceeds {limit} bytes.")


class RequestContextMiddleware:
    """One pass per request for everything that wraps it; cheaper than a stack of middlewares."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        body_limits: Mapping[str, int] | None = None,
        on_tenant: Callable[[str, int], None] | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        # Paths whose bodies have a limit of their own (a tenant archive's import).
        self.body_limits = dict(body_limits or {})
        self.on_tenant = on_tenant  # also told of each tenant request (the usage tally)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        request_id = _incoming_request_id(scope) or str(uuid.uuid4())
        id_token = request_id_var.set(request_id)
        tenant_token = tenant_var.set(None)
        keys_token = tenant_keys_var.set(None)
        started = time.perf_counter()
        status = 500
        response_started = False
        limit = self.body_limits.get(scope["path"], self.max_body_bytes)

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                headers = _with_pending_headers(message.get("headers", []), scope)
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            declared = _content_length(scope)
            if declared is not None and declared > limit:
                response = problem_response(
                    413, "payload_too_large", f"The request body exceeds {limit} bytes."
                )
                await response(scope, receive, send_with_id)
                return

            received = 0

            async def limited_receive() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        raise PayloadTooLarge(limit)
                return message

            try:
                await self.app(scope, limited_receive, send_with_id)
            except Exception as exc:  # the last resort: never a trace in a body
                if response_started:
                    raise
                await unhandled_error_response(exc)(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            access_logger.info(
                "request",
                extra={
                    "event_fields": {
                        "method": scope["method"],
                        "route": getattr(route, "path", None) or "none",
                        "path": scope["path"],
                        "status": status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                    }
                },
            )
            tenant = tenant_var.get()
            if tenant is not None:  # set by the tenant dependency once the tenant is known
                record_tenant_request(tenant, status)
                prefix = tenant_keys_var.get()
                if self.on_tenant is not None and prefix is not None:
                    self.on_tenant(prefix, status)
            tenant_keys_var.reset(keys_token)
            tenant_var.reset(tenant_token)
            request_id_var.reset(id_token)


def _with_pending_headers(
    headers: list[tuple[bytes, bytes]], scope: Scope
) -> list[tuple[bytes, bytes]]:
    """The response's headers with the pending ones put on, replacing any of the same name
    (so a 429 that carries the rate-limit headers itself never carries them twice)."""
    pending = _pending_headers(scope)
    if not pending:
        return list(headers)
    added = [
        (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in pending.items()
    ]
    names = {name for name, _ in added}
    return [h for h in headers if h[0].lower() not in names] + added


def _pending_headers(scope: Scope) -> Mapping[str, str]:
    state = scope.get("state")
    if not isinstance(state, dict):
        return {}
    pending = state.get(RESPONSE_HEADERS_STATE_KEY)
    return pending if isinstance(pending, dict) else {}


def header_value(scope: Scope, name: bytes) -> bytes | None:
    """The first value of a request header (`name` in lower case), as sent."""
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


def header_text(scope: Scope, name: bytes) -> str | None:
    """`header_value` decoded as Starlette's `Headers` decode it (latin-1)."""
    raw = header_value(scope, name)
    return None if raw is None else raw.decode("latin-1")


def _incoming_request_id(scope: Scope) -> str | None:
    raw = header_value(scope, b"x-request-id")
    if raw is None:
        return None
    try:
        value = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    return value if _REQUEST_ID.fullmatch(value) else None


def _content_length(scope: Scope) -> int | None:
    raw = header_value(scope, b"content-length")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


__all__: list[Any] = [
    "RequestContextMiddleware",
    "PayloadTooLarge",
    "add_response_headers",
    "header_value",
]
