"""Counting a tenant's rows for a quota, under a lock that makes the count hold.

A create under a quota first takes `lock_for_quota` (a transaction advisory lock keyed by
the tenant's schema and the table), then inserts with `below_quota` in its WHERE. The lock
is held to COMMIT, so the next create of the same table in the same tenant waits, and its
insert, a later statement, counts with a snapshot that sees the row committed before it:
concurrent creates cannot overshoot (docs/decisions/0025-plans-quotas-usage.md). Creates
without a quota take neither.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Table, bindparam, func, literal, select

from app.db.executor import Executor, prebuilt

# The lock's first key: quota locks never meet another user of advisory locks by chance.
_QUOTA_LOCKS = func.hashtext(literal("tessera.quota"))

_LOCKS: dict[str, Any] = {}
_COUNTS: dict[str, Any] = {}


def below_quota(table: Table) -> ColumnElement[bool]:
    """`(SELECT count(*) FROM table) < :quota`, for an insert's WHERE."""
    return select(func.count()).select_from(table).scalar_subquery() < bindparam("quota")


async def lock_for_quota(conn: Executor, table: Table) -> None:
    """Hold this tenant's quota lock of `table` until the transaction ends."""
    statement = _LOCKS.get(table.name)
    if statement is None:
        key = func.hashtext(func.current_schema() + literal("." + table.name))
        statement = _LOCKS[table.name] = prebuilt(
            select(func.pg_advisory_xact_lock(_QUOTA_LOCKS, key))
        )
    await conn.execute(statement)


async def count_rows(conn: Executor, table: Table) -> int:
    statement = _COUNTS.get(table.name)
    if statement is None:
        statement = _COUNTS[table.name] = prebuilt(select(func.count()).select_from(table))
    return int(await conn.scalar(statement) or 0)
