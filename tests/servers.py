"""Helpers for tests that run real processes: free ports, uvicorn, waiting for an answer, a
PostgreSQL cluster of a test's own."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
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
    settings: Settings,
    target: str,
    *extra_args: str,
    env: dict[str, str] | None = None,
    log: Path | None = None,
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Serve `target` with uvicorn on a free loopback port; yield the process and base URL.
    Its stderr is a pipe, or the file `log` for a server that may log more than a pipe
    holds while nobody reads it."""
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
    with contextlib.ExitStack() as files:
        stderr = files.enter_context(log.open("wb")) if log is not None else subprocess.PIPE
        process = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env or app_environment(settings),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
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


def _postgres_bindir() -> Path | None:
    """PostgreSQL's server binaries: Debian's newest, else the embedded pgserver's."""
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: p.parts)
    if debian:
        return debian[-1].parent
    with contextlib.suppress(ImportError):
        import pgserver

        bundled = Path(pgserver.__file__).parent / "pginstall" / "bin"
        if (bundled / "pg_ctl").exists():
            return bundled
    return None


class PostgresCluster:
    """A private PostgreSQL cluster in a temporary directory, on a free loopback port, that a
    test may stop (`-m fast`), crash (`-m immediate`) and start again. PostgreSQL refuses to
    run as root, so under root its commands run as the `postgres` user."""

    def __init__(self) -> None:
        bindir = _postgres_bindir()
        if bindir is None:
            raise RuntimeError("no PostgreSQL server binaries (pg_ctl) found")
        self.bindir = bindir
        self.directory = Path(tempfile.mkdtemp(prefix="tessera-pg-"))
        self.data = self.directory / "data"
        self.port = free_port()
        self._as_postgres: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
            self._as_postgres = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, tool: str, *args: str) -> None:
        command = [*self._as_postgres, str(self.bindir / tool), *args]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr.strip()}")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off"
        )
        log = str(self.directory / "postgres.log")
        self._run("pg_ctl", "-D", str(self.data), "-l", log, "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """`fast`: a clean shutdown, sessions told and closed; `immediate`: a crash (no
        shutdown checkpoint, crash recovery at the next start)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(RuntimeError):
            if (self.data / "postmaster.pid").exists():
                self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)
