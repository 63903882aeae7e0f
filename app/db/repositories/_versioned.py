"""Queries every versioned tenant table shares (projects, tasks): by id, with the optimistic
concurrency of If-Match in the statement itself."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, Table, delete, exists, select, update

from app.db.executor import Executor


def _matching(table: Table, row_id: uuid.UUID, versions: Collection[int] | None) -> list[Any]:
    where: list[ColumnElement[bool]] = [table.c.id == row_id]
    if versions is not None:
        where.append(table.c.version.in_(list(versions)))
    return where


R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class VersionedTable(Generic[R]):
    """One versioned table's by-id queries, answering its records (`from_row`)."""

    table: Table
    from_row: Callable[[Any], R]
    deleted: str = "id"  # the column a delete answers

    async def exists(self, conn: Executor, row_id: uuid.UUID) -> bool:
        return bool(await conn.scalar(select(exists().where(self.table.c.id == row_id))))

    async def update(
        self,
        conn: Executor,
        row_id: uuid.UUID,
        values: Mapping[str, Any],
        *,
        at: datetime,
        versions: Collection[int] | None,
    ) -> R | None:
        """Apply `values` and bump the version, only when the version is one of `versions`
        (None: any). The check and the write are one statement, so two writers holding the
        same ETag cannot both succeed: the second one's WHERE no longer matches once the
        first commits."""
        table = self.table
        query = (
            update(table)
            .where(*_matching(table, row_id, versions))
            .values(**values, updated_at=at, version=table.c.version + 1)
            .returning(table)
        )
        row = (await conn.execute(query)).one_or_none()
        return self.from_row(row) if row else None

    async def delete(
        self, conn: Executor, row_id: uuid.UUID, *, versions: Collection[int] | None
    ) -> Any:
        """Delete the row (under the same version rule): its `deleted` column, or None when
        nothing matched."""
        table = self.table
        query = delete(table).where(*_matching(table, row_id, versions))
        return await conn.scalar(query.returning(table.c[self.deleted]))
