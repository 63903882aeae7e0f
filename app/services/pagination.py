"""Keyset cursors: (created_at, id) of the last row of a page, newest first."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypeVar

from app.core.errors import UnprocessableEntity

DEFAULT_LIMIT, MAX_LIMIT = 20, 100

# A cursor names the last row of a page: its created_at in microseconds since the Unix epoch,
# and its id as 32 hex digits. Every string of this form names a position (the OpenAPI
# document gives the pattern, and the decoder accepts exactly that), so a cursor is either
# refused by its form or answered with the rows after it. Empty means the first page.
CURSOR_PATTERN = r"^([0-9]{1,16}-[0-9a-f]{32})?$"
CURSOR_MAX_LENGTH = 49
_CURSOR_RE = re.compile(CURSOR_PATTERN)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Row = TypeVar("Row")


def encode_cursor(at: datetime, row_id: uuid.UUID) -> str:
    return encode_position((at - _EPOCH) // timedelta(microseconds=1), row_id)


def encode_position(number: int, row_id: uuid.UUID) -> str:
    """A cursor of another order's keyset: a number (0 to 16 digits) and an id."""
    return f"{number}-{row_id.hex}"


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID] | None:
    """The position a cursor names (None for the empty cursor: the first page); any other
    string is a 422 `invalid_cursor`."""
    position = decode_position(cursor)
    if position is None:
        return None
    return _EPOCH + timedelta(microseconds=position[0]), position[1]


def decode_position(cursor: str) -> tuple[int, uuid.UUID] | None:
    """decode_cursor's number and id, for a keyset that is not (created_at, id)."""
    match = _CURSOR_RE.fullmatch(cursor)
    if match is None:
        raise UnprocessableEntity(
            "The cursor is not one this API issued.",
            code="invalid_cursor",
            extra={
                "errors": [
                    {"loc": ["query", "cursor"], "msg": "invalid cursor", "type": "invalid_cursor"}
                ]
            },
        )
    if not cursor:
        return None
    number, _, hex_id = cursor.partition("-")
    return int(number), uuid.UUID(hex=hex_id)


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
