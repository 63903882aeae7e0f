"""CPU per hot-path Redis call: redis-py's asyncio client against app/redis/resp.py.

    uv run python scripts/redis_client_cost.py [--redis-url redis://127.0.0.1:6379/11]

Runs the rate limiter's Lua script (EVALSHA, one tenant, "600/minute;20/second" style two
windows) through each client, sequentially and with many callers at once, on asyncio's
default loop and on uvloop (what `uvicorn app.main:app` runs). Reports CPU microseconds of
this process per call (Redis's own time is not included) and calls per second. Its keys
live under `tessera:{cost-*}` and are deleted at the end; nothing else is touched.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from redis.asyncio import Redis  # noqa: E402

from app.redis.resp import RespClient  # noqa: E402
from app.redis.scripts import COUNT_REQUEST  # noqa: E402

KEYS = ["tessera:{cost-a}:rl:1s", "tessera:{cost-a}:rl:60s"]
# Limits nobody reaches, so every call counts (the common case on the hot path).
ARGS = [10**9, 10**9, 1000, 60000]


def clients(url: str) -> dict[str, Callable[[], Any]]:
    return {
        "redis-py": lambda: Redis.from_url(
            url, socket_timeout=1, socket_connect_timeout=1, health_check_interval=0
        ),
        # The most redis-py can be spared: one connection (no pool checkout per command;
        # callers take turns on a lock) and no per-read timeout (callers bound their calls
        # with asyncio.timeout anyway).
        "redis-py, single connection, no socket_timeout": lambda: Redis.from_url(
            url,
            socket_timeout=None,
            socket_connect_timeout=1,
            health_check_interval=0,
            single_connection_client=True,
        ),
        "resp": lambda: RespClient.from_url(url, connect_timeout=1, reply_timeout=1),
    }


async def cpu_per_call(call: Callable[[], Awaitable[Any]], n: int) -> float:
    started = time.process_time()
    for _ in range(n):
        await call()
    return (time.process_time() - started) / n * 1e6


async def concurrent(
    call: Callable[[], Awaitable[Any]], callers: int, each: int
) -> tuple[float, float]:
    """(CPU µs per call, calls per second) with `callers` tasks calling `each` times."""

    async def caller() -> None:
        for _ in range(each):
            await call()

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    total = callers * each
    return cpu / total * 1e6, total / wall


Row = tuple[str, str, float, float]  # client, measure, median, best


async def measure(url: str, n: int, rounds: int) -> list[Row]:
    """Rounds interleave the clients, so a noisy neighbour hurts them alike; the median and
    the best round are reported."""
    built = {name: build() for name, build in clients(url).items()}
    calls: dict[str, Callable[[], Awaitable[Any]]] = {}
    for name, client in built.items():
        script = client.register_script(COUNT_REQUEST)

        async def call(script: Any = script) -> Any:
            return await script(keys=KEYS, args=ARGS)

        calls[name] = call
        for _ in range(500):  # connections opened, script loaded, code warm
            await call()
        await concurrent(call, 128, 4)
    samples: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for name, call in calls.items():
            samples.setdefault((name, "sequential, µs CPU per EVALSHA"), []).append(
                await cpu_per_call(call, n)
            )
            for callers in (16, 128):
                cpu, rate = await concurrent(call, callers, max(1, n // callers))
                samples.setdefault((name, f"{callers} callers, µs CPU per EVALSHA"), []).append(cpu)
                samples.setdefault((name, f"{callers} callers, EVALSHA per second"), []).append(
                    -rate  # negated so that "best" is the minimum everywhere
                )
    for client in built.values():
        await client.aclose()
    cleanup = RespClient.from_url(url, connect_timeout=1, reply_timeout=1)
    await cleanup.execute("DEL", *KEYS)
    await cleanup.aclose()
    rows: list[Row] = []
    for (name, what), values in sorted(samples.items(), key=lambda item: item[0][1]):
        sign = -1 if "per second" in what else 1
        rows.append((name, what, sign * statistics.median(values), sign * min(values)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/11")
    parser.add_argument("-n", type=int, default=2000, help="calls per client in each round")
    parser.add_argument("--rounds", type=int, default=15)
    options = parser.parse_args()
    results = {
        "asyncio": asyncio.run(measure(options.redis_url, options.n, options.rounds)),
        "uvloop": uvloop.run(measure(options.redis_url, options.n, options.rounds)),
    }
    print("| loop | measure | client | median | best round |")
    print("| --- | --- | --- | ---: | ---: |")
    for loop, rows in results.items():
        for name, what, median, best in rows:
            print(f"| {loop} | {what} | {name} | {median:,.0f} | {best:,.0f} |")


if __name__ == "__main__":
    main()
