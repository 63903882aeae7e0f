"""The Idempotency-Key header of creating POSTs, as the document declares it."""

from __future__ import annotations

from typing import Annotated

from fastapi import Header

from app.schemas.common import without_null
from app.services.idempotency import KEY_PATTERN

# A header of the create route itself rather than a dependency of it (each dependency costs
# FastAPI's resolution on every request); create_once checks it before anything is created.
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="1-255 visible ASCII characters. A repeat with the same body within "
        "24 hours replays the first response (Idempotent-Replayed: true). Any other key "
        "answers 400 `invalid_idempotency_key`.",
        # Only documented here: validate_key enforces the same pattern with its own code.
        json_schema_extra=without_null(pattern=KEY_PATTERN, minLength=1, maxLength=255),
    ),
]
