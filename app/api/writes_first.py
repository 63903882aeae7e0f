"""Declared writes answered before FastAPI's routing: the create, PATCH and DELETE routes of
app/api/declared_routes.py, for requests whose parameters and body the route's own models
accept.

Like `CachedReadsFirst` for the cached reads (docs/decisions/0011), and for the same
reason: FastAPI's route matching, dependency resolution and response handling cost a write
more CPU than its own work (docs/decisions/0027-writes-before-routing.md). What runs here is
what the route runs: `admit` (as the router's dependency does), `tenant_write` (as the
route's dependency does: the pinned transaction, the commit, the invalidation after it), then
the route's own `DeclaredWrite.answer`. Validation only decides whether this path may answer:
a request that any parameter or its body fails, or whose body is not plain JSON with a known
length, goes on to the route with its body replayed, and the route answers it exactly as
before (422, 400 malformed_json, 413, ...), with the same precedence against admission.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from fastapi.routing import RouteContext, iter_route_contexts
from pydantic import TypeAdapter
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.admission import admit
from app.api.declared_routes import DeclaredWrite, WriteCall, declared_write_of
from app.api.dependencies.db import tenant_write
from app.api.middleware import add_response_headers, header_text, header_value
from app.api.problems import error_response
from app.core.errors import TesseraError

WRITE_METHODS = frozenset({"POST", "PATCH", "DELETE"})
_UUID: TypeAdapter[uuid.UUID] = TypeAdapter(uuid.UUID)  # as FastAPI validates a path's ids


@dataclass(frozen=True, slots=True)
class _WriteRoute:
    """One write route of the app as the early path matches it (`declared` None: a route
    that is not a declared write, which FastAPI answers)."""

    context: RouteContext
    regex: re.Pattern[str]
    methods: frozenset[str]
    declared: DeclaredWrite | None

    def call(self, scope: Scope, path_params: Mapping[str, str], body: bytes) -> WriteCall | None:
        """The request as the route's endpoint would receive it; None when the route's own
        declarations refuse any of it (the route then answers)."""
        declared = self.declared
        assert declared is not None
        try:
            ids = {name: _UUID.validate_python(value) for name, value in path_params.items()}
            model = None
            if declared.body is not None:
                model = declared.body.model_validate(json.loads(body))
        except Exception:  # invalid JSON or values, or JSON nested past the recursion limit
            return None
        key = header_text(scope, b"idempotency-key")
        return WriteCall(
            ids=ids,
            body=model,
            if_match=header_text(scope, b"if-match"),
            key=key,
            path=Request(scope).url.path if key is not None else "",
        )


def _plain_json(scope: Scope) -> bool:
    """A JSON body of a declared length: what this path reads (anything else, the route)."""
    content_type = header_value(scope, b"content-type")
    if content_type is None or header_value(scope, b"content-length") is None:
        return False
    media_type = content_type.split(b";", 1)[0].strip().lower()
    return media_type == b"application/json"


class DeclaredWritesFirst:
    """Pure ASGI middleware, beside `CachedReadsFirst` (inside the request middleware, so
    the request id, pending response headers, access log and metrics cover what it answers)
    and outside FastAPI's routing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._routes: list[_WriteRoute] | None = None  # the app's write routes, routing order

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in WRITE_METHODS:
            found = self._match(scope)
            if found is not None:
                await self._write(scope, receive, send, *found)
                return
        await self.app(scope, receive, send)

    async def _write(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        route: _WriteRoute,
        path_params: Mapping[str, str],
    ) -> None:
        assert route.declared is not None
        received: list[Message] = []
        failure: Exception | None = None
        call: WriteCall | None = None
        body: bytes | None = b""
        if route.declared.body is not None:
            body = None
            if _plain_json(scope):
                try:
                    body = await _read_body(receive, received)
                except Exception as exc:  # 413 from the request middleware: the route's to answer
                    failure = exc
        if body:
            call = route.call(scope, path_params, body)
        elif route.declared.body is None:
            call = route.call(scope, path_params, b"")
        if call is None:
            await self.app(scope, _replay(received, failure, receive), send)
            return
        await self._answer(scope, receive, send, route, call)

    async def _answer(
        self, scope: Scope, receive: Receive, send: Send, route: _WriteRoute, call: WriteCall
    ) -> None:
        assert route.declared is not None
        scope["route"] = route.context  # for the access log, as routing would set it
        state = scope["app"].state
        authorization = header_text(scope, b"authorization")
        try:
            admitted = await admit(state, authorization, scope["method"])
            if admitted.rate is not None:
                add_response_headers(scope, admitted.rate.headers())
            # A create's Idempotency-Key is claimed in the BEGIN's round trip (decision 0031).
            claim = route.declared.claim_of(call)
            first = None if claim is None else claim.sql
            async with tenant_write(state, admitted, first=first) as write:
                response = await route.declared.answer(write, replace(call, claim=claim))
        except TesseraError as exc:
            response = error_response(exc)
        # Anything else goes up to the request middleware, which answers it as the app's own
        # handlers would (app/api/problems.py::unhandled_error_response: 503 or 500).
        await response(scope, receive, send)

    def _match(self, scope: Scope) -> tuple[_WriteRoute, dict[str, str]] | None:
        """The declared write route FastAPI would route this request to, with its path
        parameters; else None."""
        routes = self._routes
        if routes is None:
            routes = self._routes = write_routes(scope["app"].routes)
        path: str = scope["path"]
        method: str = scope["method"]
        for route in routes:
            if method not in route.methods:
                continue
            match = route.regex.match(path)
            if match is not None:
                return None if route.declared is None else (route, match.groupdict())
        return None


def write_routes(app_routes: list[Any]) -> list[_WriteRoute]:
    """The app's routes that take a write method, in routing order."""
    return [
        _WriteRoute(
            context,
            context.path_regex,
            frozenset(context.methods or ()),
            declared_write_of(context),
        )
        for context in iter_route_contexts(app_routes)
        if WRITE_METHODS & set(context.methods or ())
        and getattr(context, "path_regex", None) is not None
    ]


async def _read_body(receive: Receive, received: list[Message]) -> bytes | None:
    """The whole body, every message kept in `received`; None when the client left."""
    chunks = []
    while True:
        message = await receive()
        received.append(message)
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(received: list[Message], failure: Exception | None, receive: Receive) -> Receive:
    """`receive` as the route sees it: what was read already, then the failure reading it
    met (raised again), then the rest."""
    pending = list(received)

    async def replaying() -> Message:
        if pending:
            return pending.pop(0)
        if failure is not None:
            raise failure
        return await receive()

    return replaying
