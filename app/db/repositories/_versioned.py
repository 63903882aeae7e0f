"""Writes every versioned tenant table shares (projects, tasks): by id, with the optimistic
concurrency of If-Match in the statement itself, and the audit event in the same statement.

Each statement is built once per shape (for an update: which columns it sets, and whether
If-Match applies) and kept prebuilt (app/db/executor.py), so a write costs no SQLAlchemy
statement building or cache-key generation (docs/decisions/0015-writes-in-one-statement.md).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import (
    ARRAY,
    Integer,
    Select,
    Table,
    any_,
    bindparam,
    delete,
    exists,
    select,
    update,
)

from app.db.executor import Executor, prebuilt
from app.db.repositories.audit import AuditEntry, with_event

R = TypeVar("R")

_VERSIONS = bindparam("versions", type_=ARRAY(Integer))


@dataclass(slots=True)
class VersionedTable(Generic[R]):
    """One versioned table's by-id writes, answering its records (`from_row`)."""

    table: Table
    resource_type: str  # the audit events' resource_type
    from_row: Callable[[Any], R]
    deleted: str = "id"  # the column a delete answers
    _updates: dict[tuple[tuple[str, ...], bool], Select[Any]] = field(default_factory=dict)
    _deletes: dict[bool, Select[Any]] = field(default_factory=dict)

    def _where(self, conditional: bool) -> list[Any]:
        where = [self.table.c.id == bindparam("row_id")]
        if conditional:
            where.append(self.table.c.version == any_(_VERSIONS))
        return where

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
        event: AuditEntry,
    ) -> R | None:
        """Apply `values` and bump the version, only when the version is one of `versions`
        (None: any), recording `event` when it did. The check and the write are one
        statement, so two writers holding the same ETag cannot both succeed: the second
        one's WHERE no longer matches once the first commits."""
        columns = tuple(sorted(values))
        shape = (columns, versions is not None)
        statement = self._updates.get(shape)
        if statement is None:
            table = self.table
            write = (
                update(table)
                .where(*self._where(versions is not None))
                .values(
                    {
                        **{name: bindparam(f"new_{name}") for name in columns},
                        "updated_at": bindparam("at"),
                        "version": table.c.version + 1,
                    }
                )
            )
            statement = self._updates[shape] = prebuilt(
                with_event(write, self.resource_type, list(table.c))
            )
        params = {f"new_{name}": value for name, value in values.items()}
        params.update(event.params(), row_id=row_id, at=at)
        if versions is not None:
            params["versions"] = list(versions)
        row = (await conn.execute(statement, params)).one_or_none()
        return self.from_row(row) if row else None

    async def delete(
        self,
        conn: Executor,
        row_id: uuid.UUID,
        *,
        versions: Collection[int] | None,
        event: AuditEntry,
    ) -> Any:
        """Delete the row (under the same version rule), recording `event` when it did: its
        `deleted` column, or None when nothing matched."""
        statement = self._deletes.get(versions is not None)
        if statement is None:
            table = self.table
            write = delete(table).where(*self._where(versions is not None))
            statement = self._deletes[versions is not None] = prebuilt(
                with_event(write, self.resource_type, [table.c.id, table.c[self.deleted]])
            )
        params: dict[str, Any] = {**event.params(), "row_id": row_id}
        if versions is not None:
            params["versions"] = list(versions)
        row = (await conn.execute(statement, params)).one_or_none()
        return None if row is None else row[1]
