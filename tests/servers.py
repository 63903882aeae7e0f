"""Helpers for tests that run real processes: free ports, uvicorn, waiting for an answer."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

from app.core.config import Settings

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def app_environment(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a served Tessera reads its Settings from."""
    env = dict(os.environ)
    env.update(
        ENVIRONMENT="test",
        DATABASE_URL=settings.database_url,
        REDIS_URL=settings.redis_url,
        LOG_LEVEL="WARNING",
        **extra,
    )
    return env


def wait_for(url: str, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=0.5).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def stop(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def uvicorn(
    settings: Settings, target: str, *extra_args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Serve `target` with uvicorn on a free loopback port; yield the process and base URL."""
    port = free_port()
    args: Sequence[str] = [
        sys.executable,
        "-m",
        "uvicorn",
        target,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        *extra_args,
    ]
    process = subprocess.Popen(
        args,
        cwd=ROOT,
        env=env or app_environment(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(base + "/healthz", timeout=15, process=process)
        yield process, base
    finally:
        stop(process)
        if process.stderr is not None:
            process.stderr.close()


class Proxy:
    """A TCP proxy in front of a server (PostgreSQL, Redis) that a test can cut and restore,
    or freeze (connections stay open, nothing is passed on). With `linger` it passes a
    server's closing of a connection on that many seconds after the last data, as a slower
    network or a proxy may: the moment between a server's last word and its hanging up,
    made long enough to act in."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.server: asyncio.Server | None = None
        self.port = 0
        self.links: set[asyncio.StreamWriter] = set()
        self.frozen = False
        self.linger = 0.0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Stop accepting, and drop every open connection (as a crashed server would)."""
        assert self.server is not None
        self.server.close()
        for writer in list(self.links):
            writer.transport.abort()
        await self.server.wait_closed()
        self.links.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.links.update({writer, up_writer})

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    while self.frozen:  # a server that stops answering, connections open
                        await asyncio.sleep(0.02)
                    dst.write(data)
                    await dst.drain()
                if self.linger:
                    await asyncio.sleep(self.linger)
            dst.transport.abort()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self.links.difference_update({writer, up_writer})
