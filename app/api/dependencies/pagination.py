"""The page parameters of every list route, declared once: what the document says of them is
what the routes accept."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from app.schemas.common import without_null
from app.services.pagination import CURSOR_MAX_LENGTH, CURSOR_PATTERN, DEFAULT_LIMIT, MAX_LIMIT

PageLimit = Annotated[
    int, Query(ge=1, le=MAX_LIMIT, description=f"Items per page (default {DEFAULT_LIMIT}).")
]
# The pattern is the decoder's own (app/services/pagination.py), which answers 422
# `invalid_cursor`; declaring it here only documents it, so the more precise code stays.
PageCursor = Annotated[
    str | None,
    Query(
        max_length=CURSOR_MAX_LENGTH,
        description="The `next_cursor` of the previous page; absent or empty for the first.",
        json_schema_extra=without_null(pattern=CURSOR_PATTERN),
    ),
]
