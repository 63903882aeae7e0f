"""The base of every repository record: a frozen dataclass of one row's columns."""

from __future__ import annotations

from typing import Any, Self


class RowRecord:
    __slots__ = ()

    @classmethod
    def from_row(cls, row: Any) -> Self:
        """The record of a result row (SQLAlchemy's or the executor's), by column name."""
        return cls(**row._mapping)
