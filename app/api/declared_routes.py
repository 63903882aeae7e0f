"""Routes declared once for every versioned tenant resource (projects, tasks): the create
(Location, ETag, Idempotency-Key), the conditional update (PATCH with If-Match, ETag on the
answer) and the delete, each around the resource's own change, whose audit event its
service writes in the same transaction.

Like `cached_get` (app/api/cached_reads.py), each decorator turns a plain function into the
route's endpoint with a signature FastAPI reads: the resource's id from the path, the body
model, and the dependencies every such route takes.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request, Response, status
from pydantic import BaseModel

from app.api.dependencies.db import TenantWork, TenantWrite
from app.api.dependencies.idempotency import IdempotencyKeyHeader
from app.api.errors import CREATE_FORBIDDEN, responses
from app.api.preconditions import IfMatch, etag, if_match_versions
from app.api.responses import create_once, created
from app.services.idempotency import StoredResponse
from app.services.versioned import Versioned

KEYWORD = inspect.Parameter.KEYWORD_ONLY


def _write(values: dict[str, Any], resource_id: uuid.UUID | None = None) -> TenantWrite:
    work: TenantWrite = values["work"]
    if resource_id is None:
        return work
    return replace(work, versions=if_match_versions(values["if_match"], resource_id))


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
        async def endpoint(**values: Any) -> Response:
            conn = values["work"].conn

            async def produce() -> StoredResponse:
                record = await create(
                    _write(values), values["body"], **{name: values[name] for name in ids}
                )
                return created(
                    out.model_validate(record),
                    location=location.format(id=record.id),
                    etag=etag(record.id, record.version),
                )

            return await create_once(
                values["request"], conn, values["key"], values["body"], produce
            )

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
        async def endpoint(**values: Any) -> BaseModel:
            resource_id: uuid.UUID = values[id_name]
            record = await change(_write(values, resource_id), resource_id, values["body"])
            values["response"].headers["ETag"] = etag(record.id, record.version)
            return out.model_validate(record)

        add_route(
            router,
            path,
            "PATCH",
            endpoint,
            like=change,
            params=_params(id_name, body=body, response=Response),
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
        async def endpoint(**values: Any) -> Response:
            resource_id: uuid.UUID = values[id_name]
            await remove(_write(values, resource_id), resource_id)
            return Response(status_code=status.HTTP_204_NO_CONTENT)

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
