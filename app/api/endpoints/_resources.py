"""Shaping single-resource answers: JSON with ETag, 304, and replays of stored responses."""

from __future__ import annotations

from fastapi import Response
from pydantic import BaseModel

from app.services.idempotency import StoredResponse

JSON = "application/json"


def created(model: BaseModel, *, location: str, etag: str) -> StoredResponse:
    """A 201 as the idempotency store keeps it (bytes and the headers worth replaying)."""
    return StoredResponse(
        status=201,
        body=model.model_dump_json().encode(),
        headers={"Location": location, "ETag": etag, "Content-Type": JSON},
    )


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


def not_modified(etag: str) -> Response:
    return Response(status_code=304, headers={"ETag": etag})
