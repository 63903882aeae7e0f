"""ETags and conditional requests (RFC 9110 section 13) for single resources.

The ETag is strong, `"<id>-<version>"`: the version changes on every write, and the id in it
means an ETag copied from one resource never satisfies If-Match on another.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Header

from app.schemas.common import without_null


def etag(resource_id: uuid.UUID, version: int) -> str:
    return f'"{resource_id}-{version}"'


def _tags(header: str) -> list[str]:
    return [part.strip() for part in header.split(",") if part.strip()]


def if_match_versions(header: str | None, resource_id: uuid.UUID) -> frozenset[int] | None:
    """The versions If-Match accepts: None when there is no precondition (header absent or
    `*`, which only asks that the resource exist: a 404 says it does not). Comparison is
    strong, so weak tags (W/...) never match; an empty set means nothing can match."""
    if header is None or header.strip() == "*":
        return None
    prefix = f'"{resource_id}-'
    versions: set[int] = set()
    for tag in _tags(header):
        if tag.startswith(prefix) and tag.endswith('"'):
            number = tag[len(prefix) : -1]
            if number.isascii() and number.isdigit() and len(number) <= 9:
                versions.add(int(number))
    return frozenset(versions)


def none_match(header: str | None, current: str) -> bool:
    """True when If-None-Match names the current ETag (weak comparison, as the RFC asks)."""
    if header is None:
        return False
    if header.strip() == "*":
        return True
    return any(tag.removeprefix("W/") == current for tag in _tags(header))


IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        json_schema_extra=without_null(),
        # Any value is accepted: RFC 9110 section 13.1.1 makes a value that is neither `*` nor
        # a list of entity tags a condition that is false, so it answers 412, not 422.
        description='`*` or entity tags (`"<id>-<version>"`, comma-separated): apply only if '
        "the resource exists (`*`) or its ETag is one of them (strong comparison); else 412.",
    ),
]
IfNoneMatch = Annotated[
    str | None,
    Header(
        alias="If-None-Match",
        json_schema_extra=without_null(),
        description="Answer 304 without a body when the current ETag is one of these.",
    ),
]
