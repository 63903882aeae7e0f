"""A thin asyncio client for one standalone Redis: the few calls of the hot path, pipelined on
one connection (docs/decisions/0010-thin-redis-client-on-the-hot-path.md).

Replies are what redis-py gives with decode_responses=False (bytes, int, list, None), and
failures are redis-py's exceptions, so the limiter, the cache and REDIS_UNAVAILABLE_ERRORS
treat both clients alike. Not supported (use redis-py): TLS, unix sockets, Cluster,
Sentinel, RESP3, pub/sub, transactions, blocking commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    NoScriptError,
    RedisError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.redis.connection import RespArg, RespConnection, pack_command


class Script:
    """A Lua script run by EVALSHA; after a NOSCRIPT (a flushed or restarted server) it is
    sent once by EVAL, which also puts it back in the server's script cache."""

    def __init__(self, client: RespClient, script: str | bytes) -> None:
        self._client = client
        self.script = script.encode() if isinstance(script, str) else script
        self.sha = hashlib.sha1(self.script).hexdigest()

    async def __call__(self, keys: Sequence[RespArg] = (), args: Sequence[RespArg] = ()) -> Any:
        client = self._client
        try:
            return await client.send(pack_command(("EVALSHA", self.sha, len(keys), *keys, *args)))
        except NoScriptError:
            # NOSCRIPT means the script did not run, so running it now is no retry.
            return await client.send(pack_command(("EVAL", self.script, len(keys), *keys, *args)))


class RespClient:
    """One pipelined connection to a standalone Redis, opened on first use and again after
    it is lost. Commands are never retried: one that was sent when the connection dropped
    fails with ConnectionError, whether or not the server applied it.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6379,
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        connect_timeout: float,
        reply_timeout: float,
    ) -> None:
        self.host = host
        self.port = port
        self.db = db
        self.connect_timeout = connect_timeout
        self.reply_timeout = reply_timeout
        handshake: list[bytes] = []
        if password is not None:
            auth = ("AUTH", username, password) if username else ("AUTH", password)
            handshake.append(pack_command(auth))
        if db:
            handshake.append(pack_command(("SELECT", db)))
        self._handshake = handshake
        self._connection: RespConnection | None = None
        self._connecting: asyncio.Task[RespConnection] | None = None

    @staticmethod
    def serves(url: str) -> bool:
        """Whether `url` is one this client can connect to (see from_url)."""
        parts = urlsplit(url)
        return parts.scheme == "redis" and not parts.query and not parts.fragment

    @classmethod
    def from_url(cls, url: str, *, connect_timeout: float, reply_timeout: float) -> RespClient:
        """`redis://[[username]:password@]host[:port][/db]`, nothing else."""
        if not RespClient.serves(url):
            raise ValueError("RespClient takes redis://[[user]:password@]host[:port][/db] only")
        parts = urlsplit(url)
        path = unquote(parts.path).strip("/")
        return cls(
            unquote(parts.hostname or "localhost"),
            parts.port or 6379,
            db=int(path) if path else 0,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            connect_timeout=connect_timeout,
            reply_timeout=reply_timeout,
        )

    # --- what the app uses --------------------------------------------------------------------

    async def execute(self, *args: RespArg) -> Any:
        """Run one command; the raw reply (no redis-py response callbacks: SET gives b"OK")."""
        return await self.send(pack_command(args))

    def register_script(self, script: str | bytes) -> Script:
        return Script(self, script)

    async def incr(self, key: RespArg) -> int:
        return int(await self.send(pack_command(("INCR", key))))

    async def ping(self) -> bool:
        return bool(await self.send(pack_command(("PING",))) == b"PONG")

    async def aclose(self) -> None:
        """Close the connection; a later command opens a new one (as redis-py's aclose)."""
        if self._connecting is not None:
            with contextlib.suppress(RedisError):
                await asyncio.shield(self._connecting)
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.connect_timeout):
                    await asyncio.shield(connection.lost)

    # --- the connection -------------------------------------------------------------------------

    def send(self, payload: bytes) -> Awaitable[Any]:
        """Send a packed command; await the result for its reply (raised if an error)."""
        connection = self._connection
        if connection is not None and connection.usable():
            return connection.request(payload)
        return self._connect_and_send(payload)

    async def _connect_and_send(self, payload: bytes) -> Any:
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._open())
            self._connecting.add_done_callback(_retrieve_exception)
        # Shielded: concurrent first commands share one connect, and a caller that gives up
        # does not cancel it for the others.
        connection = await asyncio.shield(self._connecting)
        return await connection.request(payload)

    async def _open(self) -> RespConnection:
        loop = asyncio.get_running_loop()
        connection: RespConnection | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: RespConnection(loop, self.reply_timeout), self.host, self.port
                )
                # AUTH and SELECT go before anything else is sent (the connection is not
                # handed out yet); every reply is read so that no failure goes unretrieved.
                pending = [connection.request(command) for command in self._handshake]
                failures = await asyncio.gather(*pending, return_exceptions=True)
                for failure in failures:
                    if isinstance(failure, BaseException):
                        raise failure
        except BaseException as exc:
            if connection is not None:
                connection.close()
            where = f"Redis at {self.host}:{self.port}"
            if isinstance(exc, TimeoutError):
                raise RedisTimeoutError(f"Timeout connecting to {where}") from exc
            if isinstance(exc, OSError):
                raise RedisConnectionError(f"Error connecting to {where}: {exc}") from exc
            raise
        finally:
            self._connecting = None
        self._connection = connection
        return connection


def _retrieve_exception(task: asyncio.Task[RespConnection]) -> None:
    # Every caller of a failed connect may have given up already; nobody is owed a warning.
    if not task.cancelled():
        task.exception()
