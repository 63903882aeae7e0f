"""Cached GETs of the tenant API: declared once on their route with `cached_get`, answered
by that route or, before routing, by `CachedReadsFirst`, both through the same functions.

A cached route is declared by a function of its path and query parameters (annotated as
FastAPI parameters) that returns the CachedRead it stands for: the cache entry, and how to
load it in the tenant's pinned transaction on a miss. `cached_get` turns it into the route's
endpoint, and marks the route so that `CachedReadsFirst` finds it.

`CachedReadsFirst` answers a GET of a cached route without FastAPI's dependency resolution
and Response machinery, which cost more than the whole bare read Tessera is measured
against (docs/decisions/0011-cached-reads-before-routing.md). It validates the path and
query with FastAPI's own function and the route's own declarations; a request they refuse
goes on to the route, which answers it (422 after admission, as FastAPI orders it). Every
other decision is `admit` (app/api/admission.py) and `read_through`, exactly as the route
makes it; tests/integration/test_cached_reads.py sends the same requests both ways.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, get_type_hints

from fastapi import APIRouter, Request, Response
from fastapi._compat.shared import field_annotation_is_sequence
from fastapi.dependencies.utils import get_validation_alias
from fastapi.routing import RouteContext, iter_route_contexts
from pydantic import BaseModel, ConfigDict, ValidationError, create_model
from starlette.datastructures import QueryParams, State
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.admission import Admitted, AdmittedDep, admit
from app.api.declared_routes import KEYWORD, add_route
from app.api.errors import responses
from app.api.middleware import add_response_headers, header_text
from app.api.preconditions import IfNoneMatch, etag
from app.api.problems import error_response
from app.api.responses import cacheable, from_cached
from app.core.errors import TesseraError
from app.db.executor import Executor
from app.schemas.common import Page
from app.services.cache import TenantCache
from app.services.cache_entries import CachedResponse, CacheKey
from app.services.versioned import Versioned

Load = Callable[[Executor], Awaitable[CachedResponse]]


@dataclass(frozen=True, slots=True)
class CachedRead:
    """A cached GET: the entry it reads, and how to load it on a miss (in the tenant's
    pinned, read-only transaction)."""

    key: CacheKey
    load: Load


R = TypeVar("R", bound=Versioned)


def resource_read(
    key: CacheKey,
    fetch: Callable[[Executor], Awaitable[R]],
    shape: Callable[[R], BaseModel],
) -> CachedRead:
    """A single resource: `fetch`ed, shaped, with its ETag."""

    async def load(conn: Executor) -> CachedResponse:
        record = await fetch(conn)
        return cacheable(shape(record), etag=etag(record.id, record.version))

    return CachedRead(key, load)


def page_read(
    key: CacheKey,
    fetch: Callable[[Executor], Awaitable[tuple[Sequence[Any], str | None]]],
    item: type[BaseModel],
) -> CachedRead:
    """A page of a listing: `fetch`ed records as `item`s, and the next cursor."""

    async def load(conn: Executor) -> CachedResponse:
        records, next_cursor = await fetch(conn)
        return cacheable(
            Page[item](  # type: ignore[valid-type]
                items=[item.model_validate(r) for r in records], next_cursor=next_cursor
            )
        )

    return CachedRead(key, load)


ReadDeclaration = Callable[..., CachedRead]
_DECLARATION = "tessera_cached_read"  # the endpoint's attribute naming its declaration


async def read_through(state: State, admitted: Admitted, read: CachedRead) -> CachedResponse:
    """The entry from the cache, else `read.load` in the tenant's pinned transaction. A hit
    takes no database connection at all; concurrent misses on one entry share one load."""
    tenant = admitted.tenant

    async def load_in_tenant_transaction() -> CachedResponse:
        async with state.connections.transaction(
            tenant.location,
            timeout=state.settings.db_request_timeout_seconds,
            read_only=True,
            share=tenant.share,
        ) as conn:
            return await read.load(conn)

    cache: TenantCache = state.cache
    return await cache.get_or_load(
        tenant.keys, read.key, load_in_tenant_transaction, admitted.prefetched
    )


def cached_get(
    router: APIRouter, path: str, **options: Any
) -> Callable[[ReadDeclaration], ReadDeclaration]:
    """Declare `GET path` on `router` as a cached read. The decorated function takes the
    route's path and query parameters and returns its CachedRead; `options` are the
    route's (response_model, summary, responses...)."""

    def declare(declaration: ReadDeclaration) -> ReadDeclaration:
        hints = get_type_hints(declaration, include_extras=True)

        async def endpoint(**values: Any) -> Response:
            request: Request = values.pop("request")
            admitted: Admitted = values.pop("admitted")
            if_none_match: str | None = values.pop("if_none_match")
            cached = await read_through(request.app.state, admitted, declaration(**values))
            return from_cached(cached, if_none_match=if_none_match)

        setattr(endpoint, _DECLARATION, declaration)
        add_route(
            router,
            path,
            "GET",
            endpoint,
            like=declaration,
            params={
                "request": Request,
                "admitted": AdmittedDep,
                "if_none_match": inspect.Parameter(
                    "if_none_match", KEYWORD, default=None, annotation=IfNoneMatch
                ),
                **{
                    name: param.replace(kind=KEYWORD, annotation=hints[name])
                    for name, param in inspect.signature(declaration).parameters.items()
                },
            },
            **options,
        )
        return declaration

    return declare


def one_resource(out: type[BaseModel], name: str) -> dict[str, Any]:
    """The route options of a cached single resource: `out`, its ETag, 304 and 404."""
    return {
        "response_model": out,
        "summary": f"One {name} (ETag; If-None-Match answers 304)",
        "responses": responses(304, 404),
    }


def declaration_of(route: RouteContext) -> ReadDeclaration | None:
    declaration: ReadDeclaration | None = getattr(route.endpoint, _DECLARATION, None)
    return declaration


@dataclass(frozen=True, slots=True)
class _GetRoute:
    """One GET route of the app as the early path matches it; `params` (cached routes
    only) validates its path and query parameters."""

    context: RouteContext
    regex: re.Pattern[str]
    declaration: ReadDeclaration | None
    params: type[BaseModel] | None
    query_aliases: tuple[str, ...]

    def read(self, path_params: dict[str, str], query: bytes) -> CachedRead | None:
        """The CachedRead a request for this route stands for, its parameters validated
        by the route's own declarations; None when they refuse it (the route then answers
        422). Repeated query parameters count by their last value, as in FastAPI."""
        assert self.declaration is not None and self.params is not None
        given: dict[str, Any] = dict(path_params)
        if query:
            received = QueryParams(query)
            given.update((a, received[a]) for a in self.query_aliases if a in received)
        try:
            values = self.params.model_validate(given)
        except ValidationError:
            return None
        return self.declaration(**values.__dict__)


def _get_route(context: RouteContext) -> _GetRoute:
    declaration = declaration_of(context)
    if declaration is None:
        return _GetRoute(context, context.path_regex, None, None, ())
    dependant = context.dependant
    for field in dependant.query_params:
        if field_annotation_is_sequence(field.field_info.annotation):
            raise TypeError(f"{context.path_format}: a cached read takes no list parameter")
    # The very FieldInfo objects the route declares (constraints, aliases, defaults),
    # validated by pydantic as one model instead of field by field: FastAPI's own
    # request_params_to_args reads each field's annotation again on every call, which cost
    # more than the rest of a cached read.
    definitions: dict[str, Any] = {
        f.name: (f.field_info.annotation, f.field_info)
        for f in (*dependant.path_params, *dependant.query_params)
    }
    params = create_model(
        f"{declaration.__name__}_params", __config__=ConfigDict(extra="ignore"), **definitions
    )
    aliases = tuple(get_validation_alias(f) for f in dependant.query_params)
    return _GetRoute(context, context.path_regex, declaration, params, aliases)


class CachedReadsFirst:
    """Pure ASGI middleware, inside the request middleware (so the request id, the pending
    response headers, the access log and the metrics cover what it answers) and outside
    FastAPI's routing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # The app's GET routes, in routing order.
        self._routes: list[_GetRoute] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            found = self._match(scope)
            if found is not None:
                route, path_params = found
                read = route.read(path_params, scope["query_string"])
                if read is not None:
                    await self._answer(scope, receive, send, route, read)
                    return
        await self.app(scope, receive, send)

    async def _answer(
        self, scope: Scope, receive: Receive, send: Send, route: _GetRoute, read: CachedRead
    ) -> None:
        scope["route"] = route.context  # for the access log, as routing would set it
        state = scope["app"].state
        response: Response
        try:
            admitted = await admit(
                state, header_text(scope, b"authorization"), "GET", lookup=read.key
            )
            if admitted.rate is not None:
                add_response_headers(scope, admitted.rate.headers())
            cached = await read_through(state, admitted, read)
        except TesseraError as exc:
            response = error_response(exc)
        else:
            response = from_cached(cached, if_none_match=header_text(scope, b"if-none-match"))
        await response(scope, receive, send)

    def _match(self, scope: Scope) -> tuple[_GetRoute, dict[str, str]] | None:
        """The route FastAPI would route this GET to, with its path parameters, when it is a
        cached one; else None."""
        routes = self._routes
        if routes is None:
            routes = self._routes = get_routes(scope["app"].routes)
        path: str = scope["path"]
        for route in routes:
            match = route.regex.match(path)
            if match is not None:
                return None if route.declaration is None else (route, match.groupdict())
        return None


def get_routes(app_routes: list[Any]) -> list[_GetRoute]:
    """The app's GET routes in routing order, as the early path matches them."""
    return [
        _get_route(context)
        for context in iter_route_contexts(app_routes)
        if "GET" in (context.methods or ()) and getattr(context, "path_regex", None) is not None
    ]
