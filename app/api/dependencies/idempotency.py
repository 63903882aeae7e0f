"""The Idempotency-Key header of creating POSTs, checked before the body is acted on."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header

from app.schemas.common import without_null
from app.services.idempotency import KEY_PATTERN, validate_key


async def get_idempotency_key(
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="1-255 visible ASCII characters. A repeat with the same body within "
            "24 hours replays the first response (Idempotent-Replayed: true). Any other key "
            "answers 400 `invalid_idempotency_key`.",
            # Only documented here: validate_key enforces the same pattern with its own code.
            json_schema_extra=without_null(pattern=KEY_PATTERN, minLength=1, maxLength=255),
        ),
    ] = None,
) -> str | None:
    return None if idempotency_key is None else validate_key(idempotency_key)


IdempotencyKey = Annotated[str | None, Depends(get_idempotency_key)]
