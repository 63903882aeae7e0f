"""Idempotency-Key on creating POSTs: run once, replay the stored response after.

The key's record is written in the request's own transaction, together with what the request
created, so both commit or neither does: a failed request (a problem raised by the create,
a lost connection) rolls its claim back with everything else and leaves the key free to
retry, and no record is ever committed "in progress". A fresh key costs two statements
besides the create and no round trip: the claim (the key's transaction-scoped advisory
lock, taken without waiting, and its record inserted `in_progress` in the same statement,
decision 0028), sent in the BEGIN's round trip on the early path (decision 0031), and the
save of the response into that record, sent in the COMMIT's round trip (decision 0030). A
concurrent repeat fails to take the lock, finds no live record, and answers 409 at once; a
repeat after the commit finds a live record it may not claim and replays it (or answers
422 for another request). An expired record is reclaimed by the claim as if it were
absent.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from app.core.errors import BadRequest, Conflict, UnprocessableEntity
from app.db.executor import Executor
from app.db.repositories import idempotency as repo
from app.db.repositories.idempotency import IdempotencyRecord
from app.services.clock import utcnow

# One new key's save in PURGE_EVERY (counted by this process) also deletes up to
# PURGE_BATCH expired records: cleanup keeps pace with use (ten per new key), no job needed,
# and the other saves are a plain UPDATE, which PostgreSQL plans and runs in half the time
# (decision 0031).
PURGE_EVERY = 10
PURGE_BATCH = 100
_saves = itertools.count()
KEEP_FOR = timedelta(hours=24)
# 1-255 visible ASCII characters (CONTRACT section 5); the OpenAPI document gives this pattern.
KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"
_KEY_RE = re.compile(KEY_PATTERN)
# Only these headers describe the created resource; the rest belong to the request that sent them.
REPLAYED_HEADERS = ("location", "etag", "content-type")


class InvalidIdempotencyKey(BadRequest):
    code = "invalid_idempotency_key"


class IdempotencyKeyReused(UnprocessableEntity):
    code = "idempotency_key_reused"


class IdempotencyKeyInUse(Conflict):
    code = "idempotency_key_in_use"


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def validate_key(key: str) -> str:
    if not _KEY_RE.fullmatch(key):
        raise InvalidIdempotencyKey(
            "Idempotency-Key must be 1-255 visible ASCII characters (no spaces)."
        )
    return key


def fingerprint(method: str, path: str, body: Mapping[str, Any]) -> str:
    """What makes two requests "the same": method, path and the body as canonical JSON (keys
    sorted, no insignificant whitespace), so key order and spacing do not matter."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{method}\n{path}\n{canonical}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class KeyClaim:
    """A request's Idempotency-Key, ready to claim: the key, the request's fingerprint, the
    request's time (what expiry is judged by), and the claim's SQL, which the early path
    sends in the BEGIN's round trip (`TenantConnections.transaction(first=...)`)."""

    key: str
    request_hash: str
    now: datetime
    sql: str


def key_claim(key: str, method: str, path: str, body: Mapping[str, Any]) -> KeyClaim:
    """The claim of `key` (400 when malformed) for this request, at the present time."""
    request_hash = fingerprint(method, path, body)
    now = utcnow()
    sql = repo.claim_sql(validate_key(key), request_hash, now=now, keep_for=KEEP_FOR)
    return KeyClaim(key, request_hash, now, sql)


async def run_once(
    conn: Executor,
    claim: KeyClaim | None,
    produce: Callable[[], Awaitable[StoredResponse]],
) -> tuple[StoredResponse, bool]:
    """The response for this request, and whether it is a replay of an earlier one."""
    if claim is None:
        return await produce(), False
    if not await repo.claim(conn, claim.sql):
        # The key's record is live (replayed), or another transaction holds the key and
        # no live record exists yet: 409. The lookup tells which; a live record is final
        # until it expires, so it is the first response whoever holds the lock.
        stored = await repo.get_live(conn, claim.key, now=claim.now)
        return _replay(stored, claim.request_hash), True
    response = await produce()
    await repo.save_done(
        conn,
        IdempotencyRecord(
            key=claim.key,
            request_hash=claim.request_hash,
            response_status=response.status,
            response_headers={
                name: value
                for name, value in response.headers.items()
                if name.lower() in REPLAYED_HEADERS
            },
            response_body=response.body,
        ),
        purge=PURGE_BATCH if next(_saves) % PURGE_EVERY == 0 else 0,
    )
    return response, False


def _replay(stored: IdempotencyRecord | None, request_hash: str) -> StoredResponse:
    """The first response to this request, from the live record the claim left alone."""
    if stored is None:
        # Another transaction holds the key (a request still running with it); nothing was
        # created here and a retry is safe.
        raise IdempotencyKeyInUse(
            "A request with this Idempotency-Key is still being processed; retry shortly."
        )
    if stored.request_hash != request_hash:
        raise IdempotencyKeyReused(
            "This Idempotency-Key was used for a different request; use a new key."
        )
    return StoredResponse(
        status=stored.response_status, body=stored.response_body, headers=stored.response_headers
    )
