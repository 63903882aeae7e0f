"""Redis Cluster on the thin client: one RespClient per master, each command sent to the
master that owns its key's slot (docs/decisions/0020-redis-cluster-without-a-default-node.md).

No node is special. The slot map comes from CLUSTER SLOTS asked of any node that answers;
a master that stops answering fails only the commands for its own slots, and the map is
asked for again in the background (a replica promoted in its place, or the master back)
without holding up anyone. Commands are never retried after they were sent, as with
RespClient; a MOVED or ASK reply (the command did not run) is followed once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    SlotNotCoveredError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.redis.connection import RespArg, pack_command
from app.redis.resp import RespClient

# After a node failed, the map is asked for again at most this often (a dead master's
# tenants keep failing until a replica takes over; each of their requests must not cost
# every node a CLUSTER SLOTS).
REFRESH_MIN_INTERVAL_SECONDS = 1.0

Address = tuple[str, int]


def _encode(value: RespArg) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()


class RespCluster:
    """The client for `redis+cluster://` (or REDIS_CLUSTER=true) on plain redis:// URLs."""

    def __init__(
        self,
        startup_nodes: Sequence[Address],
        *,
        username: str | None = None,
        password: str | None = None,
        connect_timeout: float,
        reply_timeout: float,
    ) -> None:
        if not startup_nodes:
            raise ValueError("RespCluster needs at least one startup node")
        self.connect_timeout = connect_timeout
        self.reply_timeout = reply_timeout
        self._username = username
        self._password = password
        self._startup: list[Address] = list(startup_nodes)
        self._nodes: dict[Address, RespClient] = {}
        self._slots: list[RespClient | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        self._masters: list[Address] = []
        self._mapped = False
        self._refreshing: asyncio.Task[None] | None = None
        self._refreshed_at = -math.inf
        self._next_source = 0

    @staticmethod
    def serves(url: str) -> bool:
        """Whether `url` is one this client can connect to (database 0 only: a cluster has
        no other)."""
        if not RespClient.serves(url):
            return False
        path = unquote(urlsplit(url).path).strip("/")
        return path in ("", "0")

    @classmethod
    def from_url(cls, url: str, *, connect_timeout: float, reply_timeout: float) -> RespCluster:
        """`redis://[[username]:password@]host[:port][/0]`: any one node of the cluster."""
        if not cls.serves(url):
            raise ValueError("RespCluster takes redis://[[user]:password@]host[:port][/0] only")
        parts = urlsplit(url)
        return cls(
            [(unquote(parts.hostname or "localhost"), parts.port or 6379)],
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            connect_timeout=connect_timeout,
            reply_timeout=reply_timeout,
        )

    # --- what the app uses --------------------------------------------------------------------

    async def execute(self, *args: RespArg) -> Any:
        """Run one command whose first argument after the name is its key (GET, SET, INCR...)."""
        if len(args) < 2:
            raise RedisClusterException(f"{args[0]!r} names no key to route by")
        return await self.send(args[1], pack_command(args))

    def register_script(self, script: str | bytes) -> ClusterScript:
        return ClusterScript(self, script)

    async def incr(self, key: RespArg) -> int:
        return int(await self.send(key, pack_command(("INCR", key))))

    async def ping(self) -> bool:
        """Whether every master answers PONG."""
        masters = await self._masters_now()
        replies = await asyncio.gather(*(node.ping() for node in masters))
        return all(replies)

    async def cluster_ok(self) -> bool:
        """Whether every master answers and says cluster_state:ok (a cluster that refuses
        commands, as one requiring full coverage does once a master is gone, says fail)."""
        masters = await self._masters_now()
        infos = await asyncio.gather(*(node.execute("CLUSTER", "INFO") for node in masters))
        return all(b"cluster_state:ok" in info for info in infos)

    async def aclose(self) -> None:
        """Close every connection; a later command reconnects (as RespClient.aclose)."""
        refreshing, self._refreshing = self._refreshing, None
        if refreshing is not None:
            refreshing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refreshing
        await asyncio.gather(*(node.aclose() for node in self._nodes.values()))

    # --- routing ------------------------------------------------------------------------------

    async def send(self, key: RespArg, payload: bytes) -> Any:
        """Send a packed command to the master of `key`'s slot; its reply (raised if an error)."""
        slot = key_slot(_encode(key))
        node = self._slots[slot]
        if node is None:
            if not self._mapped:
                await self._refresh_now()
            node = self._slots[slot]
            if node is None:
                self._refresh_soon()
                raise SlotNotCoveredError(f"slot {slot} is served by no master")
        try:
            return await node.send(payload)
        except MovedError as moved:
            # The slot has moved (a failover, a resharding): the command did not run there.
            self._refresh_soon(force=True)
            return await self._node(moved.node_addr).send(payload)
        except AskError as ask:
            # Mid-migration: this one command goes to the importing node, after ASKING.
            target = self._node(ask.node_addr)
            replies = await asyncio.gather(
                target.send(pack_command(("ASKING",))), target.send(payload), return_exceptions=True
            )
            for reply in replies:
                if isinstance(reply, BaseException):
                    raise reply from ask
            return replies[1]
        except (RedisConnectionError, RedisTimeoutError, ClusterDownError, OSError):
            self._refresh_soon()
            raise

    def _node(self, address: Address) -> RespClient:
        node = self._nodes.get(address)
        if node is None:
            node = RespClient(
                address[0],
                address[1],
                username=self._username,
                password=self._password,
                connect_timeout=self.connect_timeout,
                reply_timeout=self.reply_timeout,
            )
            self._nodes[address] = node
        return node

    async def _masters_now(self) -> list[RespClient]:
        if not self._mapped:
            await self._refresh_now()
        return [self._node(address) for address in self._masters]

    def _refresh_soon(self, *, force: bool = False) -> None:
        """Ask for the slot map in the background, unless it was asked for a moment ago."""
        loop = asyncio.get_running_loop()
        if self._refreshing is not None:
            return
        if not force and loop.time() - self._refreshed_at < REFRESH_MIN_INTERVAL_SECONDS:
            return
        self._refreshing = loop.create_task(self._refresh(), name="tessera redis cluster map")
        self._refreshing.add_done_callback(_retrieve_exception)

    async def _refresh_now(self) -> None:
        """The first map, which the first commands wait for (one request for all of them)."""
        if self._refreshing is None:
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh())
            self._refreshing.add_done_callback(_retrieve_exception)
        await asyncio.shield(self._refreshing)

    async def _refresh(self) -> None:
        try:
            self._refreshed_at = asyncio.get_running_loop().time()
            # Known masters first, then the startup nodes; a different first one each time,
            # so that a dead node is not always the one asked (and waited for) first.
            sources = list(dict.fromkeys([*self._masters, *self._startup]))
            start = self._next_source % len(sources)
            self._next_source += 1
            failure: BaseException | None = None
            for address in sources[start:] + sources[:start]:
                try:
                    reply = await self._node(address).execute("CLUSTER", "SLOTS")
                except (RedisError, OSError) as exc:
                    failure = exc
                    continue
                self._apply(address, reply)
                return
            raise RedisConnectionError(f"no node of the cluster answered: {failure}") from failure
        finally:
            self._refreshing = None

    def _apply(self, source: Address, reply: list[Any]) -> None:
        slots: list[RespClient | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        masters: list[Address] = []
        for start, end, master, *_replicas in reply:
            host = master[0].decode() if master[0] else source[0]  # "": the node asked
            address = (host, int(master[1]))
            if address not in masters:
                masters.append(address)
            node = self._node(address)
            for slot in range(int(start), int(end) + 1):
                slots[slot] = node
        self._slots = slots
        self._masters = masters
        self._mapped = True
        for address in [a for a in self._nodes if a not in masters and a not in self._startup]:
            # No longer a master (a failed-over one came back as a replica): let it go.
            retired = self._nodes.pop(address)
            asyncio.get_running_loop().create_task(retired.aclose())


class ClusterScript:
    """A Lua script on the cluster: EVALSHA to the master of its first key, EVAL once after a
    NOSCRIPT (each master has its own script cache), as app.redis.resp.Script."""

    def __init__(self, cluster: RespCluster, script: str | bytes) -> None:
        self._cluster = cluster
        self.script = script.encode() if isinstance(script, str) else script
        self.sha = hashlib.sha1(self.script).hexdigest()

    async def __call__(self, keys: Sequence[RespArg] = (), args: Sequence[RespArg] = ()) -> Any:
        if not keys:
            raise RedisClusterException("a script on a cluster needs a key to route by")
        cluster, key = self._cluster, keys[0]
        try:
            return await cluster.send(
                key, pack_command(("EVALSHA", self.sha, len(keys), *keys, *args))
            )
        except NoScriptError:
            # NOSCRIPT means the script did not run, so running it now is no retry.
            return await cluster.send(
                key, pack_command(("EVAL", self.script, len(keys), *keys, *args))
            )


def _retrieve_exception(task: asyncio.Task[None]) -> None:
    # A failed background refresh is not an error of its own: the commands say so.
    if not task.cancelled():
        task.exception()
