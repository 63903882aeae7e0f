"""Queries on a tenant's `idempotency_keys` table: the claim of a key (its transaction lock
and its record in one statement, sent with the BEGIN), the lookup of a finished record, and
its completion (sent with the COMMIT)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import DateTime, bindparam, select

from app.db.executor import Executor, at_begin, at_commit, prebuilt, sql_bytes, sql_text
from app.db.models.tenant import idempotency_keys


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    key: str
    request_hash: str
    response_status: int
    response_headers: dict[str, str]
    response_body: bytes


def sql_time(value: datetime) -> str:
    """`value` (aware) as a SQL timestamptz literal, for statements with inline values."""
    return f"{sql_text(value.isoformat())}::timestamptz"


# Every field of the record but the key, the response's included (NULL until `save_done`).
_RECLAIMED = ", ".join(
    f"{column.name} = EXCLUDED.{column.name}"
    for column in idempotency_keys.c
    if column.name != "key"
)


def claim_sql(key: str, request_hash: str, *, now: datetime, keep_for: timedelta) -> str:
    """The claim of `key` at `now` (the request's time), kept for `keep_for`: take the
    key's transaction-scoped lock without waiting and, only when it was taken, insert the
    key's record `in_progress`, or reclaim the record already there when it is not live
    (expired, or not `done`); a live record is left alone. One statement, its values inline
    (`sql_text`), so that it can ride in the BEGIN's round trip (`at_begin`, decision 0031);
    its command status counts one row when this transaction now holds the key's record and
    must run the request, none when another transaction holds the key or its record is live.

    The lock id hashes the pinned schema with the key, so keys are per tenant without the
    schema name ever appearing in Python; the lock ends with the transaction. Holding it,
    no other transaction is writing this key's record, so the record is absent or committed
    (or expired and being purged by another transaction's save, which the insert waits
    for: that save is its transaction's last statement). `ON CONFLICT` judges the latest
    committed version of the row even when it committed after this statement's snapshot
    was taken (READ COMMITTED: a request that finished between our snapshot and our lock
    is still seen), and it locks that row even when its `WHERE` leaves it alone: until
    COMMIT no purge deletes it and nothing else changes it, so the lookup that follows (a
    new statement, a newer snapshot) finds the very record judged live here.

    The time is the application's clock, as for every other timestamp it writes: Citus
    refuses a function that is not IMMUTABLE, now() among them, in the WHERE of an ON
    CONFLICT on a distributed table (tests/citus), and the claim and the lookup must judge
    "live" alike."""
    at = sql_time(now)
    name = sql_text(key)
    return (
        "WITH key_lock AS (SELECT pg_try_advisory_xact_lock(hashtextextended("
        f"current_schema() || ':idempotency:' || {name}, 0)) AS got) "
        "INSERT INTO idempotency_keys AS held (key, request_hash, state, created_at, expires_at) "
        f"SELECT {name}, {sql_text(request_hash)}, 'in_progress', {at}, "
        f"{sql_time(now + keep_for)} FROM key_lock WHERE got "
        f"ON CONFLICT (key) DO UPDATE SET {_RECLAIMED} "
        # The exact complement of `_GET_LIVE`'s filter: what is not claimed, it finds.
        f"WHERE held.state <> 'done' OR held.expires_at <= {at} "
        # Not read (the simple protocol drops rows), but Citus counts the claimed rows in
        # the command status only with it: it pulls the SELECT to the coordinator, and
        # without RETURNING it reports the rows it sent, claimed or not (tests/citus).
        "RETURNING key"
    )


async def claim(conn: Executor, sql: str) -> bool:
    """Run the claim `sql` (claim_sql) as the transaction's first statement; whether this
    transaction now holds the key's record. False: another transaction holds the key, or
    its record is live (the lookup tells which)."""
    return await at_begin(conn, sql) == 1


# The time a request judges expiry by: the request's, as the claim's (claim_sql).
_NOW = bindparam("now", type_=DateTime(timezone=True))
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
        idempotency_keys.c.expires_at > _NOW,
    )
)


async def get_live(conn: Executor, key: str, *, now: datetime) -> IdempotencyRecord | None:
    """The finished record of `key` unexpired at `now`; an expired one is as good as absent."""
    row = (await conn.execute(_GET_LIVE, {"key": key, "now": now})).one_or_none()
    if row is None:
        return None
    values: dict[str, Any] = dict(row._mapping)
    values["response_headers"] = dict(values["response_headers"] or {})
    return IdempotencyRecord(**values)


def expired_keys_sql(key: str, purge: str) -> str:
    """Up to `purge` expired keys, never `key` (SQL expressions), skipping rows other
    transactions hold.

    Oldest first, by the expiry index: the planner cannot know how many rows `expires_at <
    now()` keeps and guesses a third, so without the ORDER BY it chose a sequential scan
    that stops after `purge` rows, and, with none expired, read the whole table on every
    save until autovacuum analyzed it (measured: 0.9 ms a save at 8,000 live keys, growing
    with them); the index scan stops at the first live key."""
    return (
        "SELECT key FROM idempotency_keys "
        f"WHERE expires_at < now() AND key <> {key} "
        f"ORDER BY expires_at LIMIT {purge} FOR UPDATE SKIP LOCKED"
    )


def save_done_sql(record: IdempotencyRecord, *, purge: int) -> str:
    """Record the response in the record this transaction claimed (it keeps the expiry the
    claim set), and, when `purge` is above 0, delete up to `purge` expired records, so the
    table stays as small as the keys of the last 24 hours without a separate job (one
    statement; never the key being saved: one statement must not change a row twice). Its
    values are inline, rendered by `sql_text` and `sql_bytes`, so that it can ride with the
    COMMIT (`at_commit`)."""
    key = sql_text(record.key)
    headers = sql_text(json.dumps(record.response_headers))
    purged = (
        "WITH purged AS (DELETE FROM idempotency_keys WHERE key IN ("
        f"{expired_keys_sql(key, str(int(purge)))})) "
        if purge > 0
        else ""
    )
    return (
        f"{purged}UPDATE idempotency_keys SET state = 'done', "
        f"response_status = {int(record.response_status)}, "
        f"response_headers = {headers}::jsonb, "
        f"response_body = {sql_bytes(record.response_body)} "
        f"WHERE key = {key}"
    )


async def save_done(conn: Executor, record: IdempotencyRecord, *, purge: int) -> None:
    """Record the response of the key this transaction claimed and purge up to `purge`
    expired records (save_done_sql), in the COMMIT's round trip on the request path: the
    save is the transaction's last statement, and nothing reads its answer."""
    await at_commit(conn, save_done_sql(record, purge=purge))
