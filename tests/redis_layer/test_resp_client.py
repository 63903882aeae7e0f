"""The thin Redis client (app/redis/resp.py) against real Redis servers: replies as redis-py
gives them, pipelining, scripts, outages, timeouts, AUTH and databases, closing."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import (
    AuthenticationError,
    NoScriptError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.redis.client import REDIS_UNAVAILABLE_ERRORS, build_redis, own_timeout
from app.redis.resp import RespClient
from tests.redis_layer.redis_servers import REDIS_URL, RedisProcess, redis_settings, start_redis
from tests.servers import Proxy


def client_for(url: str, *, reply_timeout: float = 5.0, connect_timeout: float = 2.0) -> RespClient:
    return RespClient.from_url(url, connect_timeout=connect_timeout, reply_timeout=reply_timeout)


@pytest.fixture
async def client() -> AsyncIterator[RespClient]:
    resp = client_for(REDIS_URL)
    yield resp
    await resp.aclose()


@pytest.fixture
def key(slug: str) -> str:
    """A key under a tenant slug the session cleans up afterwards."""
    return f"tessera:{{{slug}}}:resp"


async def connection_id(client: RespClient) -> int:
    return int(await client.execute("CLIENT", "ID"))


# --- replies ------------------------------------------------------------------------------

# Every shape a script can answer, each run through both clients.
REPLY_SCRIPTS = {
    "integer": "return 42",
    "number truncated": "return 3.9",
    "true": "return true",
    "false is nil": "return false",
    "nil from GET": "return redis.call('GET', KEYS[1] .. ':absent')",
    "bulk string": "return 'two words'",
    "empty bulk string": "return ''",
    "binary argument echoed": "return ARGV[1]",
    "status": "return redis.status_reply('FINE')",
    "empty array": "return {}",
    "nested array": "return {1, 'two', {3, false, ''}, {}}",
    "large bulk string": "return string.rep('x', 3000000)",
    "error reply": "return redis.error_reply('BOOM it broke')",
    "error inside an array": "return {1, redis.error_reply('INNER it broke')}",
    "runtime error": "return redis.call('INCR', KEYS[1] .. ':text')",
}


@pytest.mark.parametrize("lua", REPLY_SCRIPTS.values(), ids=REPLY_SCRIPTS.keys())
async def test_script_replies_are_what_redis_py_gives(
    client: RespClient, inspector: aioredis.Redis, key: str, lua: str
) -> None:
    await inspector.set(f"{key}:text", "not a number")
    keys, args = [key], [b"bin\r\n\x00ary\xff"]

    async def outcome(script: Any) -> tuple[str, Any]:
        try:
            reply = await script(keys=keys, args=args)
        except RedisError as exc:
            return "raised", (type(exc), str(exc))
        if isinstance(reply, list):
            reply = [(type(r), str(r)) if isinstance(r, Exception) else r for r in reply]
        return "returned", reply

    ours = await outcome(client.register_script(lua))
    theirs = await outcome(inspector.register_script(lua))
    assert ours == theirs


async def test_commands_answer_bytes_integers_none_and_raw_status(
    client: RespClient, key: str
) -> None:
    assert await client.execute("SET", key, "1") == b"OK"
    assert await client.execute("GET", key) == b"1"
    assert await client.incr(key) == 2
    assert await client.execute("INCRBY", key, -5) == -3
    assert await client.execute("GET", f"{key}:absent") is None
    assert await client.execute("MGET", key, f"{key}:absent") == [b"-3", None]
    assert await client.execute("ECHO", "café") == "café".encode()
    assert await client.execute("ECHO", 2.5) == b"2.5"
    assert await client.ping() is True


async def test_error_replies_raise_redis_py_exceptions_with_its_messages(
    client: RespClient, inspector: aioredis.Redis, key: str
) -> None:
    await inspector.set(key, "text")
    for command in (("INCR", key), ("LPUSH", key, "x"), ("NOSUCHCOMMAND",)):
        with pytest.raises(ResponseError) as ours:
            await client.execute(*command)
        with pytest.raises(ResponseError) as theirs:
            await inspector.execute_command(*command)
        assert (type(ours.value), str(ours.value)) == (type(theirs.value), str(theirs.value))
    with pytest.raises(NoScriptError):
        await client.execute("EVALSHA", "0" * 40, 0)
    # The connection is still in step after errors.
    assert await client.execute("ECHO", "after") == b"after"


async def test_an_argument_that_cannot_be_sent_raises_type_error_and_sends_nothing(
    client: RespClient,
) -> None:
    with pytest.raises(TypeError):
        await client.execute("ECHO", True)
    assert await client.execute("ECHO", "next") == b"next"


# --- pipelining ---------------------------------------------------------------------------


async def test_thousands_of_concurrent_commands_each_get_their_own_reply(
    client: RespClient,
) -> None:
    # Some replies large enough to arrive in pieces, interleaved with small ones.
    payloads = [f"{i}:".encode() + (b"y" * 70_000 if i % 97 == 0 else b"") for i in range(5000)]
    replies = await asyncio.gather(*(client.execute("ECHO", p) for p in payloads))
    assert replies == payloads


async def test_concurrent_commands_share_one_connection_opened_once(
    client: RespClient, inspector: aioredis.Redis
) -> None:
    ids = await asyncio.gather(*(connection_id(client) for _ in range(50)))
    assert len(set(ids)) == 1
    ours = {c["id"]: c for c in await inspector.client_list()}[str(ids[0])]
    assert ours["db"] == REDIS_URL.rsplit("/", 1)[1]


async def test_build_redis_gives_the_thin_client_for_redis_urls_only() -> None:
    assert isinstance(build_redis(redis_settings("redis://127.0.0.1:6379/3")), RespClient)
    for url in ("rediss://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0?protocol=3"):
        other = build_redis(redis_settings(url))
        assert isinstance(other, aioredis.Redis)
        await other.aclose()
    cluster = build_redis(redis_settings("redis://127.0.0.1:6379/0", cluster=True))
    assert not isinstance(cluster, RespClient)
    await cluster.aclose()


# --- scripts ------------------------------------------------------------------------------


def command_calls(server: RedisProcess) -> dict[str, int]:
    with redis.Redis(port=server.port) as direct:
        stats = direct.info("commandstats")
    calls = {name: stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval")}
    return {name: int(count) for name, count in calls.items()}


async def test_callers_add_no_timer_of_their_own_where_the_client_bounds_each_request() -> None:
    thin = client_for(REDIS_URL, reply_timeout=0.25)
    assert own_timeout(thin, 0.25) is None  # its requests fail after 0.25 s by themselves
    assert own_timeout(thin, 0.1) == 0.1  # a caller in more of a hurry keeps its own
    redis_py = aioredis.Redis.from_url(REDIS_URL)
    try:
        assert own_timeout(redis_py, 0.25) == 0.25
    finally:
        await redis_py.aclose()


async def test_a_flushed_script_is_sent_again_once_then_run_by_sha(
    private_redis: RedisProcess,
) -> None:
    client = client_for(private_redis.url)
    script = client.register_script("return redis.call('INCR', KEYS[1])")
    try:
        assert await script(keys=["counter"]) == 1  # unknown to the server: NOSCRIPT, EVAL
        assert await script(keys=["counter"]) == 2
        assert command_calls(private_redis) == {"evalsha": 2, "eval": 1}

        with redis.Redis(port=private_redis.port) as direct:
            direct.script_flush()
        assert await script(keys=["counter"]) == 3  # counted once, not twice
        assert await script(keys=["counter"]) == 4
        assert command_calls(private_redis) == {"evalsha": 4, "eval": 2}
    finally:
        await client.aclose()


async def test_concurrent_calls_of_a_script_unknown_to_the_server_all_succeed(
    private_redis: RedisProcess,
) -> None:
    client = client_for(private_redis.url)
    script = client.register_script("return redis.call('INCR', KEYS[1])")
    try:
        results = await asyncio.gather(*(script(keys=["counter"]) for _ in range(20)))
        assert sorted(results) == list(range(1, 21))
    finally:
        await client.aclose()


# --- outages ------------------------------------------------------------------------------


async def test_a_refused_connection_raises_connection_error_at_once(closed_port_url: str) -> None:
    client = client_for(closed_port_url)
    started = time.monotonic()
    with pytest.raises(RedisConnectionError):
        await client.ping()
    assert time.monotonic() - started < 0.5
    await client.aclose()


async def test_a_restarted_server_fails_commands_then_is_reconnected_to(
    private_redis: RedisProcess, tmp_path: Path
) -> None:
    client = client_for(private_redis.url)
    try:
        assert await client.incr("counter") == 1
        private_redis.process.terminate()
        private_redis.process.wait(timeout=5)
        with pytest.raises(RedisConnectionError):
            await client.incr("counter")
        with pytest.raises(RedisConnectionError):  # refused: nothing listens
            await client.incr("counter")

        restarted = start_redis(tmp_path, port=private_redis.port)
        private_redis.process = restarted.process  # the fixture stops this one
        assert await client.incr("counter") == 1  # a new, empty server
    finally:
        await client.aclose()


async def test_commands_in_flight_when_the_connection_drops_fail_and_are_not_retried(
    private_redis: RedisProcess,
) -> None:
    proxy = Proxy("127.0.0.1", private_redis.port)
    await proxy.start()
    client = client_for(f"redis://127.0.0.1:{proxy.port}/0")
    try:
        assert await client.incr("counter") == 1
        proxy.frozen = True  # requests reach the proxy and wait there
        in_flight = [asyncio.ensure_future(client.incr("counter")) for _ in range(5)]
        await asyncio.sleep(0.1)
        await proxy.cut()
        outcomes = await asyncio.gather(*in_flight, return_exceptions=True)
        assert all(isinstance(o, RedisConnectionError) for o in outcomes)
        assert all(isinstance(o, REDIS_UNAVAILABLE_ERRORS) for o in outcomes)

        proxy.frozen = False
        await proxy.start()  # the same port again
        assert await client.incr("counter") == 2  # the five were never sent on, nor retried
    finally:
        await client.aclose()
        await proxy.cut()


async def test_a_caller_that_times_out_leaves_the_pipeline_in_step(
    private_redis: RedisProcess,
) -> None:
    client = client_for(private_redis.url, reply_timeout=5.0)
    try:
        before = await connection_id(client)
        private_redis.freeze()
        for index in range(10):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await client.execute("ECHO", f"abandoned {index}")
        private_redis.thaw()
        # The ten late replies arrive first and are dropped; each caller gets its own.
        fresh = [f"fresh {index}".encode() for index in range(10)]
        assert await asyncio.gather(*(client.execute("ECHO", f) for f in fresh)) == fresh
        assert await connection_id(client) == before  # no reconnect was needed
    finally:
        private_redis.thaw()
        await client.aclose()


async def test_a_server_that_stops_answering_is_given_up_after_the_reply_timeout(
    private_redis: RedisProcess,
) -> None:
    client = client_for(private_redis.url, reply_timeout=0.2)
    try:
        before = await connection_id(client)
        private_redis.freeze()
        abandoned = []
        for _ in range(3):  # callers with their own, shorter timeout
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    abandoned.append(asyncio.ensure_future(client.ping()))
                    await asyncio.shield(abandoned[-1])
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError):
            await client.ping()  # a caller without one: the client's bound applies
        assert time.monotonic() - started < 0.6
        for request in abandoned:
            with pytest.raises(RedisTimeoutError):
                await request

        private_redis.thaw()
        assert await client.ping() is True
        assert await connection_id(client) != before  # the hung connection was closed
    finally:
        private_redis.thaw()
        await client.aclose()


@contextlib.asynccontextmanager
async def trickling(url: str, *, every: float, size: int) -> AsyncIterator[str]:
    """A proxy to the Redis at `url` that passes its replies on `size` bytes every `every`
    seconds: a server that keeps answering, slowly. Yields the proxy's URL."""
    target = urlsplit(url)
    links: list[asyncio.Task[None]] = []
    streams: list[asyncio.StreamWriter] = []

    async def pass_on(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, chunk: int | None
    ) -> None:
        while data := await reader.read(65536):
            for offset in range(0, len(data), chunk or len(data)):
                if chunk is not None:
                    await asyncio.sleep(every)
                writer.write(data[offset : offset + (chunk or len(data))])

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(target.hostname, target.port)
        streams.extend((writer, up_writer))
        requests = asyncio.create_task(pass_on(reader, up_writer, None))
        replies = asyncio.create_task(pass_on(up_reader, writer, size))
        links.extend((requests, replies))

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}{target.path}"
    finally:
        server.close()
        for link in links:
            link.cancel()
        await asyncio.gather(*links, return_exceptions=True)
        for stream in streams:
            stream.close()
            with contextlib.suppress(OSError):
                await stream.wait_closed()
        await server.wait_closed()


async def test_each_request_fails_once_its_reply_is_late_while_the_server_still_answers() -> None:
    # Each ECHO reply is 8 bytes ("$2\r\nr0\r\n"), passed on 2 bytes every 50 ms: bytes arrive
    # all the time, and the replies of five requests sent together complete 0.2, 0.4, ...
    # 1.0 s after them. With a 0.5 s reply timeout the first two are answered, the other
    # three fail at their deadline, and the connection stays.
    async with trickling(REDIS_URL, every=0.05, size=2) as url:
        client = client_for(url, reply_timeout=0.5)
        try:
            assert await client.execute("PING") == b"PONG"
            started = time.monotonic()
            replies = await asyncio.gather(
                *(client.execute("ECHO", f"r{index}") for index in range(5)),
                return_exceptions=True,
            )
            assert replies[:2] == [b"r0", b"r1"]
            assert all(isinstance(reply, RedisTimeoutError) for reply in replies[2:]), replies
            assert time.monotonic() - started < 0.8  # at their deadline, not at their reply
            # Their replies are dropped when they come (the last by about 1.0 s); the
            # connection is still in step.
            await asyncio.sleep(0.4)
            assert await client.execute("ECHO", "after") == b"after"
            assert client._connection is not None and not client._connection.closed  # noqa: SLF001
        finally:
            await client.aclose()


async def test_a_connect_whose_handshake_hangs_times_out(private_redis: RedisProcess) -> None:
    # The TCP handshake completes (the kernel answers it); SELECT is never answered.
    client = client_for(f"redis://127.0.0.1:{private_redis.port}/1", connect_timeout=0.2)
    private_redis.freeze()
    try:
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError):
            await client.ping()
        assert time.monotonic() - started < 0.6
    finally:
        private_redis.thaw()
    assert await client.ping() is True
    await client.aclose()


# --- AUTH and databases -------------------------------------------------------------------


@pytest.fixture
def protected_redis(private_redis: RedisProcess) -> Iterator[RedisProcess]:
    """The private server with a default password and a user of its own."""
    with redis.Redis(port=private_redis.port) as direct:
        direct.acl_setuser(
            "alice", enabled=True, passwords=["+wonderland"], keys=["*"], categories=["+@all"]
        )
        direct.config_set("requirepass", "secret")
    yield private_redis


async def test_password_and_database_come_from_the_url(protected_redis: RedisProcess) -> None:
    port = protected_redis.port
    default_user = client_for(f"redis://:secret@127.0.0.1:{port}/3")
    alice = client_for(f"redis://alice:wonderland@127.0.0.1:{port}/4")
    try:
        await default_user.execute("SET", "where", "three")
        await alice.execute("SET", "where", "four")
        assert await alice.execute("ACL", "WHOAMI") == b"alice"
        for db, value in ((3, b"three"), (4, b"four")):
            with redis.Redis(port=port, password="secret", db=db) as direct:
                assert direct.get("where") == value
    finally:
        await default_user.aclose()
        await alice.aclose()


async def test_a_wrong_or_missing_password_is_an_outage_not_a_bug(
    protected_redis: RedisProcess,
) -> None:
    port = protected_redis.port
    for url in (f"redis://:wrong@127.0.0.1:{port}/0", f"redis://127.0.0.1:{port}/0"):
        client = client_for(url)
        with pytest.raises(AuthenticationError) as caught:
            await client.ping()
        assert isinstance(caught.value, REDIS_UNAVAILABLE_ERRORS)
        await client.aclose()


async def test_a_password_for_a_server_without_one_is_an_authentication_error(
    private_redis: RedisProcess,
) -> None:
    client = client_for(f"redis://:unneeded@127.0.0.1:{private_redis.port}/0")
    with pytest.raises(AuthenticationError):
        await client.ping()
    await client.aclose()


# --- closing ------------------------------------------------------------------------------


async def test_aclose_fails_what_is_in_flight_and_closes_the_socket(
    private_redis: RedisProcess, inspector: aioredis.Redis
) -> None:
    client = client_for(private_redis.url)
    own = await connection_id(client)
    private_redis.freeze()
    in_flight = asyncio.ensure_future(client.ping())
    await asyncio.sleep(0.05)
    private_redis.thaw()
    await client.aclose()
    with pytest.raises(RedisConnectionError):
        await in_flight
    await until_only_the_inspector_is_connected(private_redis)
    with redis.Redis(port=private_redis.port) as direct:
        assert own not in [int(c["id"]) for c in direct.client_list()]


async def test_a_closed_client_reconnects_on_its_next_command_as_redis_py_does(
    client: RespClient,
) -> None:
    await client.aclose()  # never connected: nothing to do
    first = await connection_id(client)
    await client.aclose()
    assert await connection_id(client) != first


async def test_aclose_while_the_first_connect_is_under_way_closes_what_it_opens(
    private_redis: RedisProcess,
) -> None:
    client = client_for(private_redis.url)
    first = asyncio.ensure_future(client.ping())
    await asyncio.sleep(0)  # the connect has started
    await client.aclose()
    [outcome] = await asyncio.gather(first, return_exceptions=True)
    assert outcome is True or isinstance(outcome, RedisConnectionError)
    await until_only_the_inspector_is_connected(private_redis)


async def until_only_the_inspector_is_connected(server: RedisProcess) -> None:
    deadline = time.monotonic() + 2
    with redis.Redis(port=server.port) as direct:
        while len(direct.client_list()) > 1:
            assert time.monotonic() < deadline, direct.client_list()
            await asyncio.sleep(0.02)
