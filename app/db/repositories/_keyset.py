"""The keyset condition shared by every newest-first page: rows strictly after a cursor."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ColumnElement, DateTime, Uuid, literal, tuple_


def older_than(
    at_column: ColumnElement[datetime],
    id_column: ColumnElement[uuid.UUID],
    after: tuple[datetime, uuid.UUID],
) -> ColumnElement[bool]:
    """(at, id) < cursor, the row comparison that the (at DESC, id DESC) indexes serve."""
    return tuple_(at_column, id_column) < tuple_(
        literal(after[0], DateTime(timezone=True)), literal(after[1], Uuid)
    )
