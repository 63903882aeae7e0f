"""The time a change happens at, taken once per change.

Rows get an explicit timestamp rather than `now()` (the transaction's start, identical for
every row a transaction writes), so rows created in one transaction still order by creation,
and a row's created_at, updated_at and its audit event share one instant.
"""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
