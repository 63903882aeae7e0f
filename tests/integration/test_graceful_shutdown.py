"""SIGTERM (CONTRACT section 10): requests in flight finish, then the process exits.

uvicorn (since 0.29) finishes its graceful shutdown and then re-raises the captured SIGTERM,
so a clean stop ends "terminated by SIGTERM" (-15 here, 143 in a shell), which Docker and
Kubernetes treat as a normal stop; an exit code 0 is accepted too. What proves the shutdown
was graceful: every in-flight request answered 200 and uvicorn logged its clean finish.
"""

from __future__ import annotations

import asyncio
import signal
import time

import httpx

from app.core.config import Settings
from tests.served_app import SLOW_SECONDS
from tests.servers import uvicorn

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
