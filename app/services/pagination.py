"""Opaque keyset cursors: (created_at, id) of the last row of a page, newest first."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol, TypeVar

from app.core.errors import UnprocessableEntity

DEFAULT_LIMIT, MAX_LIMIT = 20, 100

Row = TypeVar("Row")


def encode_cursor(at: datetime, row_id: uuid.UUID) -> str:
    raw = json.dumps([at.isoformat(), str(row_id)], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The position a cursor names; a malformed cursor is a 422 `invalid_cursor`."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        at_text, id_text = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        at = datetime.fromisoformat(at_text)
        if at.tzinfo is None:
            raise ValueError("naive timestamp")
        at = at.astimezone(UTC)  # also refuses offsets that fall outside datetime's range
        return at, uuid.UUID(id_text)
    except (ValueError, TypeError, OverflowError, binascii.Error, UnicodeEncodeError) as exc:
        raise UnprocessableEntity(
            "The cursor is not one this API issued.",
            code="invalid_cursor",
            extra={
                "errors": [
                    {"loc": ["query", "cursor"], "msg": "invalid cursor", "type": "invalid_cursor"}
                ]
            },
        ) from exc


def cut_page(
    rows: list[Row], limit: int, position: Callable[[Row], tuple[datetime, uuid.UUID]]
) -> tuple[list[Row], str | None]:
    """One page from `limit + 1` rows fetched newest first: the extra row only says that a
    next page exists, and the cursor names the last row kept."""
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_cursor(*position(rows[-1]))


class CreatedRow(Protocol):
    @property
    def created_at(self) -> datetime: ...

    @property
    def id(self) -> uuid.UUID: ...


def created(row: CreatedRow) -> tuple[datetime, uuid.UUID]:
    """The keyset position of a row ordered by (created_at, id)."""
    return row.created_at, row.id
