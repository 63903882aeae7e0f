"""SIGTERM (CONTRACT section 10): requests in flight finish, then the process exits.

uvicorn (since 0.29) finishes its graceful shutdown and then re-raises the captured SIGTERM,
so a clean stop ends "terminated by SIGTERM" (-15 here, 143 in a shell), which Docker and
Kubernetes treat as a normal stop; an exit code 0 is accepted too. What proves the shutdown
was graceful: every in-flight request answered 200 and uvicorn logged its clean finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.core.config import Settings
from tests.served_app import SLOW_SECONDS
from tests.servers import ROOT, app_environment, free_port, stop, uvicorn, wait_for

GRACEFUL_TIMEOUT_SECONDS = 20  # what the Dockerfile and `tessera serve` pass to uvicorn
IN_FLIGHT = 20


async def test_sigterm_lets_in_flight_requests_finish_then_exits_zero(settings: Settings) -> None:
    with uvicorn(
        settings,
        "tests.served_app:create_slow_app",
        "--factory",
        "--timeout-graceful-shutdown",
        str(GRACEFUL_TIMEOUT_SECONDS),
    ) as (process, base):
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            requests = [asyncio.create_task(client.get("/_slow")) for _ in range(IN_FLIGHT)]
            # Well inside the 1 s the route sleeps: every request has reached the app.
            await asyncio.sleep(SLOW_SECONDS / 3)
            assert not any(task.done() for task in requests)
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            responses = await asyncio.gather(*requests)
        returncode = await asyncio.to_thread(process.wait, GRACEFUL_TIMEOUT_SECONDS)
        elapsed = time.monotonic() - signalled
        assert process.stderr is not None
        log = process.stderr.read().decode()
    assert [r.status_code for r in responses] == [200] * IN_FLIGHT
    assert all(r.json() == {"status": "done"} for r in responses)
    assert returncode in (0, -signal.SIGTERM), log
    assert "Waiting for connections to close" in log or "Waiting for background" in log, log
    assert "Finished server process" in log, log
    assert elapsed < GRACEFUL_TIMEOUT_SECONDS


# --- the production server (`tessera serve`), SIGTERM right behind a burst of requests -------

REPETITIONS = 30
AT_ONCE = 3  # repetitions side by side, each on its own server: the test takes a third
BURST = 20
SIGTERM_AFTER_SECONDS = 0.05


class ForkServer:
    """tests/forkserver.py: `tessera serve` children forked from one warm process."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        with log.open("wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.forkserver"],
                cwd=ROOT,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        self.children: set[int] = set()

    def _ask(self, line: str) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline().strip()
        if not answer:
            raise RuntimeError(f"the fork server died (exit code {self.process.poll()})")
        return answer

    def serve(self, port: int) -> int:
        pid = int(self._ask(f"serve {port}"))
        self.children.add(pid)
        return pid

    async def exit_code(self, pid: int, within: float) -> int:
        deadline = time.monotonic() + within
        while (answer := self._ask(f"poll {pid}")) == "running":
            assert time.monotonic() < deadline, f"server {pid} still running after {within} s"
            await asyncio.sleep(0.01)
        self.children.discard(pid)
        return int(answer)

    def close(self) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while self._ask(f"poll {pid}") == "running":
                time.sleep(0.01)
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        self.process.wait(timeout=10)
        self.process.stdout.close()


@pytest.fixture
def forkserver(settings: Settings, tmp_path: Path) -> Iterator[ForkServer]:
    env = app_environment(
        settings,
        AUTH_ISSUER=settings.auth_issuer,
        DB_TENANT_ROLE_PREFIX=settings.db_tenant_role_prefix,
        RATE_LIMIT_DEFAULT="1000000/minute",
        # Three servers at once, twenty requests each, on a machine that may be busy: a
        # request queued for a pooled connection waits for one rather than answer 503 after
        # the default 3 s (what is tested is that every request is answered, and with 201).
        DB_POOL_TIMEOUT_SECONDS="10",
        DB_REQUEST_TIMEOUT_SECONDS="10",
    )
    running = ForkServer(env, tmp_path / "forkserver.log")
    yield running
    running.close()


async def until_up(client: httpx.AsyncClient) -> None:
    deadline = time.monotonic() + 15
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if (await client.get("/healthz")).status_code == 200:
                return
        assert time.monotonic() < deadline, "the server did not start"
        await asyncio.sleep(0.01)


async def sigterm_behind_a_burst(
    forkserver: ForkServer, headers: dict[str, str], repetition: int
) -> tuple[list[int | str], int, float]:
    """A fresh `tessera serve`; 20 concurrent POST /v1/projects on 20 new connections;
    SIGTERM 50 ms later. The answers, the exit code, and the seconds from SIGTERM to exit."""
    port = free_port()
    pid = forkserver.serve(port)
    limits = httpx.Limits(max_connections=BURST, max_keepalive_connections=BURST)
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        await until_up(client)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        body = {"name": f"burst {repetition}"}
        burst = [
            asyncio.create_task(client.post("/v1/projects", json=body, headers=headers))
            for _ in range(BURST)
        ]
        await asyncio.sleep(SIGTERM_AFTER_SECONDS)
        os.kill(pid, signal.SIGTERM)
        signalled = time.monotonic()
        answers = await asyncio.gather(*burst, return_exceptions=True)
    code = await forkserver.exit_code(pid, within=GRACEFUL_TIMEOUT_SECONDS + 5)
    statuses = [a.status_code if isinstance(a, httpx.Response) else repr(a) for a in answers]
    return statuses, code, time.monotonic() - signalled


async def test_sigterm_50_ms_after_20_requests_answers_every_one_30_times_over(
    forkserver: ForkServer, headers: dict[str, str], tmp_path: Path
) -> None:
    """Issue 15: plain uvicorn closed a connection it had accepted but not yet read from in
    3 runs of 10. Every request of every repetition gets its 201, and each process exits
    well within the graceful timeout."""
    failures: list[str] = []
    exits: list[float] = []
    for first in range(0, REPETITIONS, AT_ONCE):
        runs = await asyncio.gather(
            *(sigterm_behind_a_burst(forkserver, headers, n) for n in range(first, first + AT_ONCE))
        )
        for statuses, code, seconds in runs:
            exits.append(seconds)
            if statuses != [201] * BURST or code not in (0, -signal.SIGTERM):
                failures.append(f"exit {code}, answers {statuses}")
    log = (tmp_path / "forkserver.log").read_text()
    print(f"SIGTERM to exit: {min(exits):.2f}-{max(exits):.2f} s over {len(exits)} runs")
    assert not failures, "\n".join(failures) + "\n" + log[-3000:]
    assert max(exits) < GRACEFUL_TIMEOUT_SECONDS
    assert "Traceback" not in log, log[-3000:]


# --- Ctrl-C: `./scripts/start.sh` stops `tessera serve` with one, and nothing prints a traceback


@pytest.mark.parametrize(
    ("signals", "exit_codes"),
    [
        ((signal.SIGINT,), (0,)),  # Ctrl-C
        ((signal.SIGINT, signal.SIGINT), (0,)),  # pressed twice: uvicorn's forced exit
        ((signal.SIGINT, signal.SIGTERM), (-signal.SIGTERM,)),  # start.sh's cleanup follows
    ],
    ids=["ctrl-c", "ctrl-c-twice", "ctrl-c-then-sigterm"],
)
def test_tessera_serve_stops_on_ctrl_c_without_a_traceback(
    settings: Settings, tmp_path: Path, signals: tuple[int, ...], exit_codes: tuple[int, ...]
) -> None:
    port = free_port()
    env = app_environment(
        settings,
        AUTH_ISSUER=settings.auth_issuer,
        DB_TENANT_ROLE_PREFIX=settings.db_tenant_role_prefix,
    )
    env["LOG_LEVEL"] = "INFO"  # uvicorn's lines say how it stopped
    log = tmp_path / "serve.log"
    tessera = Path(sys.executable).with_name("tessera")
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [str(tessera), "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        wait_for(f"http://127.0.0.1:{port}/readyz", timeout=30, process=process)
        time.sleep(0.5)  # the tenant registry's listener is connected and pinging
        for sent in signals:
            process.send_signal(sent)
            time.sleep(0.05)
        returncode = process.wait(timeout=GRACEFUL_TIMEOUT_SECONDS)
    finally:
        stop(process)
    output = log.read_text()
    assert "Finished server process" in output, output
    assert "Traceback" not in output and "Error" not in output, output
    assert returncode in exit_codes, output
