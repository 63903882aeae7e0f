"""Shaping tenant API answers: JSON with ETag, 304, creates run once per Idempotency-Key,
replays of stored and cached responses."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Response
from pydantic import BaseModel

from app.api.preconditions import none_match
from app.db.executor import Executor
from app.services import idempotency
from app.services.cache_entries import CachedResponse
from app.services.idempotency import KeyClaim, StoredResponse

JSON = "application/json"


def created(model: BaseModel, *, location: str, etag: str) -> StoredResponse:
    """A 201 as the idempotency store keeps it (bytes and the headers worth replaying)."""
    return StoredResponse(
        status=201,
        body=model.model_dump_json().encode(),
        headers={"Location": location, "ETag": etag, "Content-Type": JSON},
    )


def changed(model: BaseModel, *, etag: str) -> Response:
    """A 200 with the changed resource and its new ETag (serialized once, by the model)."""
    return Response(
        content=model.model_dump_json().encode(),
        headers={"ETag": etag},
        media_type=JSON,
    )


async def create_once(
    conn: Executor, claim: KeyClaim | None, produce: Callable[[], Awaitable[StoredResponse]]
) -> Response:
    """The answer to a creating POST: `produce()`'s, or with an Idempotency-Key (`claim`)
    the replay of the first response to the same request (app/services/idempotency.py)."""
    stored, replayed = await idempotency.run_once(conn, claim, produce)
    return from_stored(stored, replayed=replayed)


def from_stored(stored: StoredResponse, *, replayed: bool) -> Response:
    headers = {
        name: value for name, value in stored.headers.items() if name.lower() != "content-type"
    }
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return Response(
        content=stored.body,
        status_code=stored.status,
        headers=headers,
        media_type=stored.headers.get("Content-Type", JSON),
    )


def cacheable(model: BaseModel, *, etag: str | None = None) -> CachedResponse:
    """A 200 as the cache keeps it: the serialized body, and the ETag of a single resource."""
    return CachedResponse(body=model.model_dump_json().encode(), media_type=JSON, etag=etag)


def from_cached(cached: CachedResponse, *, if_none_match: str | None = None) -> Response:
    """The response a cached (or just loaded) entry stands for; 304 when If-None-Match names
    its ETag, so a revalidation that hits the cache never reaches PostgreSQL."""
    if cached.etag is not None and none_match(if_none_match, cached.etag):
        return not_modified(cached.etag)
    return Response(
        content=cached.body,
        status_code=cached.status,
        headers={"ETag": cached.etag} if cached.etag is not None else None,
        media_type=cached.media_type,
    )


def not_modified(etag: str) -> Response:
    return Response(status_code=304, headers={"ETag": etag})
