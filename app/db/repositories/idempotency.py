"""Queries on a tenant's `idempotency_keys` table, and the per-key transaction lock."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Interval, LargeBinary, bindparam, delete, func, select, text
from sqlalchemy.dialects.postgresql import JSONB, insert

from app.db.executor import Executor, prebuilt
from app.db.models.tenant import idempotency_keys

# The lock id hashes the pinned schema with the key, so keys are per tenant without the
# schema name ever appearing in Python; the lock ends with the transaction.
_TRY_LOCK = prebuilt(
    text(
        "SELECT pg_try_advisory_xact_lock("
        "hashtextextended(current_schema() || ':idempotency:' || :key, 0))"
    )
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


_GET_LIVE = prebuilt(
    select(
        idempotency_keys.c.key,
        idempotency_keys.c.request_hash,
        idempotency_keys.c.response_status,
        idempotency_keys.c.response_headers,
        idempotency_keys.c.response_body,
    ).where(
        idempotency_keys.c.key == bindparam("key"),
        idempotency_keys.c.state == "done",
        idempotency_keys.c.expires_at > func.now(),
    )
)


async def get_live(conn: Executor, key: str) -> IdempotencyRecord | None:
    """The finished, unexpired record of `key`; an expired one is as good as absent."""
    row = (await conn.execute(_GET_LIVE, {"key": key})).one_or_none()
    if row is None:
        return None
    values: dict[str, Any] = dict(row._mapping)
    values["response_headers"] = dict(values["response_headers"] or {})
    return IdempotencyRecord(**values)


def _save_done_and_purge() -> Any:
    """Record the response, replacing an expired record of the same key (the caller holds
    the key's lock and found no live record, so any row left is an expired one), and delete
    up to `purge` expired records (rows other transactions hold are skipped), so the table
    stays as small as the keys of the last 24 hours without a separate job. One statement."""
    values = {
        "key": bindparam("key"),
        "request_hash": bindparam("request_hash"),
        "state": "done",
        "response_status": bindparam("response_status"),
        "response_headers": bindparam("response_headers", type_=JSONB),
        "response_body": bindparam("response_body", type_=LargeBinary),
        "created_at": func.now(),
        "expires_at": func.now() + bindparam("keep_for", type_=Interval),
    }
    save = insert(idempotency_keys).values(**values)
    save = save.on_conflict_do_update(
        index_elements=[idempotency_keys.c.key],
        set_={name: save.excluded[name] for name in values if name != "key"},
    )
    expired = (
        select(idempotency_keys.c.key)
        # Never the key being saved: one statement must not change a row twice.
        .where(
            idempotency_keys.c.expires_at < func.now(), idempotency_keys.c.key != bindparam("key")
        )
        .limit(bindparam("purge"))
        .with_for_update(skip_locked=True)
    )
    purge = delete(idempotency_keys).where(idempotency_keys.c.key.in_(expired))
    return save.add_cte(purge.cte("purged"))


_SAVE_DONE = prebuilt(_save_done_and_purge())


async def save_done(
    conn: Executor, record: IdempotencyRecord, *, keep_for: timedelta, purge: int
) -> None:
    """Record the response and purge up to `purge` expired records (_save_done_and_purge)."""
    await conn.execute(
        _SAVE_DONE,
        {
            "key": record.key,
            "request_hash": record.request_hash,
            "response_status": record.response_status,
            "response_headers": record.response_headers,
            "response_body": record.response_body,
            "keep_for": keep_for,
            "purge": purge,
        },
    )
