"""Queries on a tenant's `idempotency_keys` table, and the per-key transaction lock."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select, text
from sqlalchemy.dialects.postgresql import insert

from app.db.executor import Executor
from app.db.models.tenant import idempotency_keys

# The lock id hashes the pinned schema with the key, so keys are per tenant without the
# schema name ever appearing in Python; the lock ends with the transaction.
_TRY_LOCK = text(
    "SELECT pg_try_advisory_xact_lock("
    "hashtextextended(current_schema() || ':idempotency:' || :key, 0))"
)


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    key: str
    request_hash: str
    response_status: int
    response_headers: dict[str, str]
    response_body: bytes


async def try_lock_key(conn: Executor, key: str) -> bool:
    """Take the key's transaction-scoped lock without waiting; False when another
    transaction (a request still running with this key) holds it."""
    return bool(await conn.scalar(_TRY_LOCK, {"key": key}))


async def get_live(conn: Executor, key: str) -> IdempotencyRecord | None:
    """The finished, unexpired record of `key`; an expired one is as good as absent."""
    row = (
        await conn.execute(
            select(
                idempotency_keys.c.key,
                idempotency_keys.c.request_hash,
                idempotency_keys.c.response_status,
                idempotency_keys.c.response_headers,
                idempotency_keys.c.response_body,
            ).where(
                idempotency_keys.c.key == key,
                idempotency_keys.c.state == "done",
                idempotency_keys.c.expires_at > func.now(),
            )
        )
    ).one_or_none()
    if row is None:
        return None
    values: dict[str, Any] = dict(row._mapping)
    values["response_headers"] = dict(values["response_headers"] or {})
    return IdempotencyRecord(**values)


async def save_done(conn: Executor, record: IdempotencyRecord, *, keep_for: timedelta) -> None:
    """Record the response; replaces an expired record of the same key (the caller holds the
    key's lock and found no live record, so any row left is an expired one)."""
    values = {
        "key": record.key,
        "request_hash": record.request_hash,
        "state": "done",
        "response_status": record.response_status,
        "response_headers": record.response_headers,
        "response_body": record.response_body,
        "created_at": func.now(),
        "expires_at": func.now() + keep_for,
    }
    statement = insert(idempotency_keys).values(**values)
    statement = statement.on_conflict_do_update(
        index_elements=[idempotency_keys.c.key],
        set_={name: statement.excluded[name] for name in values if name != "key"},
    )
    await conn.execute(statement)


async def purge_expired(conn: Executor, *, limit: int) -> None:
    """Delete up to `limit` expired records (rows other transactions hold are skipped), so
    the table stays as small as the keys of the last 24 hours without a separate job."""
    expired = (
        select(idempotency_keys.c.key)
        .where(idempotency_keys.c.expires_at < func.now())
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    await conn.execute(delete(idempotency_keys).where(idempotency_keys.c.key.in_(expired)))
