"""One RESP connection of the thin Redis client (app/redis/resp.py): commands encoded and
replies parsed in C (hiredis), pipelined in order, each failed at its own deadline, errors
as redis-py's exceptions."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import hiredis
from redis.exceptions import (
    AskError,
    AuthenticationError,
    BusyLoadingError,
    ClusterCrossSlotError,
    ClusterDownError,
    ExecAbortError,
    MasterDownError,
    MovedError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

RespArg = bytes | str | int | float

# Encodes a command as a RESP array of bulk strings, in C. Its stub types the argument as a
# 1-tuple; it takes any length.
pack_command: Callable[[tuple[RespArg, ...]], bytes] = hiredis.pack_command  # type: ignore[assignment]

# Error replies whose first word names a redis-py exception (the subset of redis-py's own
# tables that a standalone server or a cluster node sends to these commands). The rest are
# ResponseError.
_ERROR_CLASSES: dict[str, type[RedisError]] = {
    "NOSCRIPT": NoScriptError,
    "LOADING": BusyLoadingError,
    "NOAUTH": AuthenticationError,
    "WRONGPASS": AuthenticationError,
    "NOPERM": NoPermissionError,
    "OOM": OutOfMemoryError,
    "READONLY": ReadOnlyError,
    "EXECABORT": ExecAbortError,
    "MOVED": MovedError,
    "ASK": AskError,
    "TRYAGAIN": TryAgainError,
    "CLUSTERDOWN": ClusterDownError,
    "MASTERDOWN": MasterDownError,
    "CROSSSLOT": ClusterCrossSlotError,
}


# "ERR" replies that redis-py takes for connection trouble, not for a command's error.
_ERR_CLASSES: dict[str, type[RedisError]] = {
    "max number of clients reached": RedisConnectionError,
    "invalid password": AuthenticationError,
    "AUTH <password> called without any password configured for the default user. "
    "Are you sure your configuration is correct?": AuthenticationError,
}


def reply_error(message: str) -> RedisError:
    """The exception redis-py raises for an error reply (the code word stripped as it does)."""
    code, _, rest = message.partition(" ")
    if code == "ERR":
        return _ERR_CLASSES.get(rest, ResponseError)(rest)
    error_class = _ERROR_CLASSES.get(code)
    if error_class is None:
        return ResponseError(message)
    return error_class(rest)


_INCOMPLETE = object()  # hiredis.Reader's answer when the buffer holds no whole reply


class RespConnection(asyncio.Protocol):
    """One TCP connection: requests are written at once, replies resolve futures in order.

    A future whose caller gave up (cancelled by a timeout) stays in the queue, so its reply,
    when it comes, is discarded rather than handed to the next caller. Every request fails
    with TimeoutError once `reply_timeout` seconds have passed without its reply, so callers
    need no timer of their own (one timer per connection serves them all). A connection
    that has requests outstanding and receives nothing for `reply_timeout` seconds is taken
    to be hung and closed: every request on it fails with TimeoutError and the client opens
    a new one for the next command.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, reply_timeout: float) -> None:
        self._loop = loop
        self._reply_timeout = reply_timeout
        self._reader = hiredis.Reader(replyError=reply_error, notEnoughData=_INCOMPLETE)
        self._waiters: deque[tuple[asyncio.Future[Any], float]] = deque()  # and deadline
        self._transport: asyncio.Transport | None = None
        self._last_progress = 0.0
        self._watchdog: asyncio.TimerHandle | None = None
        self.closed = False
        self.lost: asyncio.Future[None] = loop.create_future()

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's and uvloop's transports both do what asyncio.Transport says, though
        # uvloop's do not inherit from it.
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        waiters = self._waiters
        reader.feed(data)
        self._last_progress = self._loop.time()
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self._abort(RedisConnectionError(f"Redis protocol error: {exc}"))
                return
            if reply is _INCOMPLETE:
                return
            if not waiters:
                self._abort(RedisConnectionError("Redis sent a reply nobody asked for"))
                return
            future, _ = waiters.popleft()
            if future.done():
                continue  # its caller gave up, or it timed out: dropped, the order kept
            if isinstance(reply, RedisError):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        detail = f": {exc}" if exc is not None else ""
        self._fail_waiters(RedisConnectionError, f"Connection to Redis lost{detail}")
        if not self.lost.done():
            self.lost.set_result(None)

    # --- requests ---------------------------------------------------------------------------

    def request(self, payload: bytes) -> asyncio.Future[Any]:
        """Send one packed command (or several); the future resolves with the first reply."""
        future = self._loop.create_future()
        if self.closed:  # closed while its caller waited for the connect
            future.set_exception(RedisConnectionError("Connection to Redis closed"))
            return future
        now = self._loop.time()
        if not self._waiters:
            self._last_progress = now
            if self._watchdog is None:
                self._watchdog = self._loop.call_later(self._reply_timeout, self._check_progress)
        self._waiters.append((future, now + self._reply_timeout))
        assert self._transport is not None
        self._transport.write(payload)
        return future

    def usable(self) -> bool:
        return not self.closed and self._transport is not None and not self._transport.is_closing()

    def close(self) -> None:
        """Close after writing what is buffered; outstanding requests fail at once."""
        self._fail_waiters(RedisConnectionError, "Connection to Redis closed by the client")
        if self._transport is not None:
            self._transport.close()

    def _abort(self, error: RedisError) -> None:
        self._fail_waiters(type(error), str(error))
        if self._transport is not None:
            self._transport.abort()

    def _fail_waiters(self, error_class: type[RedisError], message: str) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        waiters = self._waiters
        while waiters:
            future, _ = waiters.popleft()
            if not future.done():
                future.set_exception(error_class(message))

    def _check_progress(self) -> None:
        # One timer per connection, re-armed while requests are outstanding: no per-request
        # timer on the hot path.
        self._watchdog = None
        if self.closed or not self._waiters:
            return
        now = self._loop.time()
        silent = now - self._last_progress
        if silent >= self._reply_timeout:
            self._abort(
                RedisTimeoutError(f"Redis sent nothing for {silent:.2f} s; connection closed")
            )
            return
        # The server answers, but late: requests past their deadline fail now, and their
        # replies are dropped when they come. Deadlines grow along the queue.
        next_check = self._reply_timeout - silent
        for future, deadline in self._waiters:
            if future.done():
                continue
            if deadline > now:
                next_check = min(next_check, deadline - now)
                break
            future.set_exception(
                RedisTimeoutError(f"Redis did not answer within {self._reply_timeout:.2f} s")
            )
        self._watchdog = self._loop.call_later(next_check, self._check_progress)
