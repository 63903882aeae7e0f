"""Routes declared once for every versioned tenant resource (projects, tasks): the create
(Location, ETag, Idempotency-Key), the conditional update (PATCH with If-Match, ETag on the
answer) and the delete, each around the resource's own change, whose audit event its
service writes in the same transaction.

Like `cached_get` (app/api/cached_reads.py), each decorator turns a plain function into the
route's endpoint with a signature FastAPI reads: the resource's id from the path, the body
model, and the dependencies every such route takes. What the endpoint does once FastAPI has
validated the request is the route's `DeclaredWrite.answer`, which the early path of writes
(app/api/writes_first.py) calls as well for the requests it takes before routing.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from fastapi import APIRouter, Request, Response, status
from pydantic import BaseModel

from app.api.dependencies.db import TenantWork, TenantWrite
from app.api.dependencies.idempotency import IdempotencyKeyHeader
from app.api.errors import CREATE_FORBIDDEN, responses
from app.api.preconditions import IfMatch, etag, if_match_versions
from app.api.responses import changed, create_once, created
from app.services import idempotency
from app.services.idempotency import KeyClaim, StoredResponse
from app.services.versioned import Versioned

KEYWORD = inspect.Parameter.KEYWORD_ONLY


@dataclass(frozen=True, slots=True)
class WriteCall:
    """A write request, its parameters validated: the path's ids, the body, and the headers
    the routes read (If-Match, Idempotency-Key); `path` is the request's path (what an
    Idempotency-Key's fingerprint covers; only read when `key` is set); `claim` the key's
    claim when the early path built it before the transaction (`DeclaredWrite.claim_of`)."""

    ids: dict[str, uuid.UUID]
    body: BaseModel | None = None
    if_match: str | None = None
    key: str | None = None
    path: str = ""
    claim: KeyClaim | None = None


Answer = Callable[[TenantWrite, WriteCall], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class DeclaredWrite:
    """What a declared route does once its request is validated and its transaction open:
    the route's endpoint calls `answer`, and so does the early path of writes
    (app/api/writes_first.py), so the two cannot differ. `body` is the body model (None:
    the route reads no body)."""

    body: type[BaseModel] | None
    answer: Answer
    creates: bool = False  # a create: an Idempotency-Key is claimed for it

    def claim_of(self, call: WriteCall) -> KeyClaim | None:
        """The claim of `call`'s Idempotency-Key (400 when malformed) when the route is a
        create and the request has one; else None."""
        if not self.creates or call.key is None:
            return None
        assert call.body is not None
        body = call.body.model_dump(mode="json", exclude_unset=True)
        return idempotency.key_claim(call.key, "POST", call.path, body)


_DECLARATION = "tessera_declared_write"  # the endpoint's attribute naming its DeclaredWrite


def declared_write_of(route: Any) -> DeclaredWrite | None:
    """The DeclaredWrite of a route (a RouteContext or a route), None for any other route."""
    declared: DeclaredWrite | None = getattr(route.endpoint, _DECLARATION, None)
    return declared


def _endpoint(declared: DeclaredWrite, ids: Sequence[str]) -> Callable[..., Awaitable[Response]]:
    """The route's endpoint: FastAPI has validated the parameters and opened the transaction
    (`work`)."""

    async def endpoint(**values: Any) -> Response:
        key: str | None = values.get("key")
        call = WriteCall(
            ids={name: values[name] for name in ids},
            body=values.get("body"),
            if_match=values.get("if_match"),
            key=key,
            path=values["request"].url.path if key is not None else "",
        )
        return await declared.answer(values["work"], call)

    setattr(endpoint, _DECLARATION, declared)
    return endpoint


def _conditional(write: TenantWrite, call: WriteCall, resource_id: uuid.UUID) -> TenantWrite:
    return replace(write, versions=if_match_versions(call.if_match, resource_id))


def add_route(
    router: APIRouter,
    path: str,
    method: str,
    endpoint: Callable[..., Awaitable[Any]],
    *,
    like: Callable[..., Any],
    params: dict[str, Any],
    **options: Any,
) -> None:
    """Add `endpoint` (which takes **values) as the route, with `params` (name: annotation or
    inspect.Parameter) as the signature FastAPI reads, and the name and doc of `like`."""
    endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            p if isinstance(p, inspect.Parameter) else inspect.Parameter(n, KEYWORD, annotation=p)
            for n, p in params.items()
        ],
        return_annotation=Response,
    )
    endpoint.__name__ = like.__name__
    endpoint.__doc__ = like.__doc__
    router.add_api_route(path, endpoint, methods=[method], **options)


def _id_name(path: str) -> str:
    return path.rsplit("{", 1)[1].rstrip("}")


def _params(id_name: str, **own: Any) -> dict[str, Any]:
    """What every such route takes: the id, its own parameters, the pinned connection, the
    caller, the cache invalidation, and If-Match."""
    return {
        "request": Request,
        id_name: uuid.UUID,
        **own,
        "work": TenantWork,
        "if_match": inspect.Parameter("if_match", KEYWORD, default=None, annotation=IfMatch),
    }


Creation = Callable[..., Awaitable[Versioned]]


def create_route(
    router: APIRouter,
    path: str,
    *,
    body: type[BaseModel],
    out: type[BaseModel],
    location: str,
    summary: str,
    errors: tuple[int, ...],
) -> Callable[[Creation], Creation]:
    """POST `path` (201): the decorated `create(write, body, **ids)` (ids: the path's
    parameters) creates the resource and returns its record, answered as
    `out` with `Location` (`location` formatted with its `id`) and its ETag; with an
    Idempotency-Key, a repeat replays the first answer (app/services/idempotency.py)."""
    ids = [part[1:-1] for part in path.split("/") if part.startswith("{")]

    def declare(create: Creation) -> Creation:
        async def answer(write: TenantWrite, call: WriteCall) -> Response:
            assert call.body is not None

            async def produce() -> StoredResponse:
                record = await create(write, call.body, **call.ids)
                return created(
                    out.model_validate(record),
                    location=location.format(id=record.id),
                    etag=etag(record.id, record.version),
                )

            # Built by the early path before the transaction (its SQL went with the BEGIN),
            # else here, on the routed path, and sent now.
            claim = call.claim if call.claim is not None else declared.claim_of(call)
            return await create_once(write.conn, claim, produce)

        declared = DeclaredWrite(body, answer, creates=True)
        endpoint = _endpoint(declared, ids)
        add_route(
            router,
            path,
            "POST",
            endpoint,
            like=create,
            params={
                "request": Request,
                **dict.fromkeys(ids, uuid.UUID),
                "body": body,
                "work": TenantWork,
                "key": inspect.Parameter(
                    "key", KEYWORD, default=None, annotation=IdempotencyKeyHeader
                ),
            },
            status_code=status.HTTP_201_CREATED,
            response_model=out,
            summary=summary,
            responses={**responses(*errors), **CREATE_FORBIDDEN},
        )
        return create

    return declare


Change = Callable[[TenantWrite, uuid.UUID, Any], Awaitable[Versioned]]
Removal = Callable[[TenantWrite, uuid.UUID], Awaitable[None]]


def update_route(
    router: APIRouter, path: str, *, body: type[BaseModel], out: type[BaseModel]
) -> Callable[[Change], Change]:
    """PATCH `path`: the decorated `change(write, id, body)` applies the fields sent when the
    resource's version is one of `write.versions` (from If-Match; None: unconditional) and
    returns the new record, answered as `out` with its ETag."""
    id_name = _id_name(path)

    def declare(change: Change) -> Change:
        async def answer(write: TenantWrite, call: WriteCall) -> Response:
            resource_id = call.ids[id_name]
            record = await change(_conditional(write, call, resource_id), resource_id, call.body)
            return changed(out.model_validate(record), etag=etag(record.id, record.version))

        endpoint = _endpoint(DeclaredWrite(body, answer), (id_name,))
        add_route(
            router,
            path,
            "PATCH",
            endpoint,
            like=change,
            params=_params(id_name, body=body),
            response_model=out,
            summary="Change the fields sent (If-Match: 412 unless it names the current ETag)",
            responses=responses(404, 412),
        )
        return change

    return declare


def delete_route(router: APIRouter, path: str, *, summary: str) -> Callable[[Removal], Removal]:
    """DELETE `path` (204): the decorated `remove(write, id)` deletes the resource when its
    version is one of `write.versions` (None: unconditional)."""
    id_name = _id_name(path)

    def declare(remove: Removal) -> Removal:
        async def answer(write: TenantWrite, call: WriteCall) -> Response:
            resource_id = call.ids[id_name]
            await remove(_conditional(write, call, resource_id), resource_id)
            return Response(status_code=status.HTTP_204_NO_CONTENT)

        endpoint = _endpoint(DeclaredWrite(None, answer), (id_name,))
        add_route(
            router,
            path,
            "DELETE",
            endpoint,
            like=remove,
            params=_params(id_name),
            status_code=status.HTTP_204_NO_CONTENT,
            summary=summary,
            responses=responses(404, 412),
        )
        return remove

    return declare
