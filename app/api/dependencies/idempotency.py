"""The Idempotency-Key header of creating POSTs, checked before the body is acted on."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header

from app.services.idempotency import validate_key


async def get_idempotency_key(
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="1-255 visible ASCII characters. A repeat with the same body within "
            "24 hours replays the first response (Idempotent-Replayed: true).",
        ),
    ] = None,
) -> str | None:
    return None if idempotency_key is None else validate_key(idempotency_key)


IdempotencyKey = Annotated[str | None, Depends(get_idempotency_key)]
