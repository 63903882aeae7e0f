"""What every versioned tenant resource (projects, tasks) does the same way: 404 by id,
partial updates and deletes under If-Match, each change with its audit event (written by
the change's own statement)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel

from app.core.errors import NotFound, PreconditionFailed
from app.db.executor import Executor
from app.db.repositories._versioned import VersionedTable
from app.db.repositories.audit import AuditEntry
from app.services import audit
from app.services.clock import utcnow


class VersionMismatch(PreconditionFailed):
    def __init__(self) -> None:
        super().__init__("If-Match does not match the current ETag of this resource.")


class Versioned(Protocol):
    @property
    def id(self) -> uuid.UUID: ...

    @property
    def version(self) -> int: ...


R = TypeVar("R", bound=Versioned)


@dataclass(frozen=True, slots=True)
class Resource(Generic[R]):
    """A versioned resource as its service sees it: its audit name, its 404, its
    repository's get, and its table's by-id queries (VersionedTable)."""

    name: str  # the audit events' resource_type, and their action's prefix
    not_found: Callable[[], NotFound]
    get: Callable[[Executor, uuid.UUID], Awaitable[R | None]]
    table: VersionedTable[R]

    async def get_or_404(self, conn: Executor, resource_id: uuid.UUID) -> R:
        record = await self.get(conn, resource_id)
        if record is None:
            raise self.not_found()
        return record

    def event(self, verb: str, *, actor: str, at: datetime) -> AuditEntry:
        return audit.entry(actor=actor, action=f"{self.name}.{verb}", at=at)

    async def update(
        self,
        conn: Executor,
        resource_id: uuid.UUID,
        body: BaseModel,
        *,
        actor: str,
        versions: Collection[int] | None,
    ) -> R:
        """Apply the fields `body` sets; `versions` (from If-Match) None means
        unconditional."""
        changes = body.model_dump(exclude_unset=True)
        if not changes:
            # Nothing to change: no new version, no event; the precondition still applies.
            current = await self.get_or_404(conn, resource_id)
            if versions is not None and current.version not in versions:
                raise VersionMismatch()
            return current
        at = utcnow()
        event = self.event("updated", actor=actor, at=at)
        record = await self.table.update(
            conn, resource_id, changes, at=at, versions=versions, event=event
        )
        if record is None:
            raise await self._missing_or_mismatch(conn, resource_id)
        return record

    async def delete(
        self,
        conn: Executor,
        resource_id: uuid.UUID,
        *,
        actor: str,
        versions: Collection[int] | None,
    ) -> Any:
        """Delete it; answers what the table's delete answers (VersionedTable.deleted)."""
        event = self.event("deleted", actor=actor, at=utcnow())
        removed = await self.table.delete(conn, resource_id, versions=versions, event=event)
        if removed is None:
            raise await self._missing_or_mismatch(conn, resource_id)
        return removed

    async def _missing_or_mismatch(self, conn: Executor, resource_id: uuid.UUID) -> Exception:
        if await self.table.exists(conn, resource_id):
            return VersionMismatch()
        return self.not_found()
