"""`tessera serve`: the API under uvicorn, stopping on SIGTERM without dropping a request.

uvicorn's own shutdown closes every connection that has no request in progress, including
one accepted a moment ago whose request has not been read yet: its client gets the
connection closed without an answer (issue 15: 1 of 20 concurrent requests in 3 runs of 10
when SIGTERM came 50 ms after them). `DrainingServer` stops the way Go's
`http.Server.Shutdown` does: it takes in the connections the kernel has already completed,
stops listening, gives connections that have not delivered their first request a moment
to do so, then lets every request in progress finish (keep-alive off) before the lifespan
shuts down, all within the graceful timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import select
import socket

import uvicorn

from app.core.config import get_settings

logger = logging.getLogger("uvicorn.error")

GRACEFUL_TIMEOUT_SECONDS = 20
# How long a connection accepted before the shutdown may take to deliver its first request
# (Go waits 5 s; a client that has connected sends its request within milliseconds).
FIRST_REQUEST_SECONDS = 1.0
# How long the shutdown keeps taking in connections the kernel completed before it began.
BACKLOG_SECONDS = 0.2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser("serve", help="run the API (the production command)")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes; more than 1 uses uvicorn's own workers, which stop the plain way "
        "(scale out with replicas instead)",
    )
    serve.add_argument(
        "--graceful-timeout",
        type=int,
        default=GRACEFUL_TIMEOUT_SECONDS,
        help="seconds a SIGTERM waits for requests in flight",
    )
    serve.add_argument(
        "--forwarded-allow-ips",
        help="proxies whose X-Forwarded-* headers are trusted (uvicorn's setting; '*': any)",
    )
    serve.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    get_settings()  # fail fast, one line, before uvicorn starts
    serve(
        args.host,
        args.port,
        workers=args.workers,
        graceful_timeout=args.graceful_timeout,
        forwarded_allow_ips=args.forwarded_allow_ips,
    )
    return 0


def serve(
    host: str,
    port: int,
    *,
    workers: int = 1,
    graceful_timeout: int = GRACEFUL_TIMEOUT_SECONDS,
    forwarded_allow_ips: str | None = None,
) -> None:
    settings = get_settings()
    options = {
        "host": host,
        "port": port,
        "log_level": settings.log_level.lower(),
        "access_log": False,
        "timeout_graceful_shutdown": graceful_timeout,
        "proxy_headers": True,
        "forwarded_allow_ips": forwarded_allow_ips,
    }
    if workers > 1:
        uvicorn.run("app.main:app", workers=workers, **options)  # type: ignore[arg-type]
        return
    config = uvicorn.Config("app.main:app", **options)  # type: ignore[arg-type]
    server = DrainingServer(config)
    try:
        server.run()
    except KeyboardInterrupt:
        # As uvicorn.run: after a graceful stop on SIGINT (Ctrl-C) uvicorn raises the signal
        # again for the default handler; the stop is done, so no traceback.
        pass
    if not server.started:
        raise SystemExit(3)  # as uvicorn.run: the app did not start


class DrainingServer(uvicorn.Server):
    """uvicorn's Server, stopping without dropping a connection it accepted (module doc)."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        logger.info("Shutting down")
        loop = asyncio.get_running_loop()
        timeout = self.config.timeout_graceful_shutdown
        deadline = loop.time() + (timeout if timeout is not None else math.inf)

        await self._accept_backlog(loop.time() + BACKLOG_SECONDS)
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()

        first_requests_by = min(deadline, loop.time() + FIRST_REQUEST_SECONDS)
        while (
            loop.time() < first_requests_by
            and not self.force_exit
            and any(_awaiting_first_request(c) for c in self.server_state.connections)
        ):
            await asyncio.sleep(0.01)

        # From here as uvicorn: idle connections close now, the others after their response.
        for connection in list(self.server_state.connections):
            connection.shutdown()
        await asyncio.sleep(0.1)
        try:
            await asyncio.wait_for(
                self._wait_tasks_to_complete(),
                timeout=None if math.isinf(deadline) else max(0.0, deadline - loop.time()),
            )
        except TimeoutError:
            logger.error(
                "Cancel %s running task(s), timeout graceful shutdown exceeded",
                len(self.server_state.tasks),
            )
            for task in self.server_state.tasks:
                task.cancel(msg="Task cancelled, timeout graceful shutdown exceeded")
        if not self.force_exit:
            await self.lifespan.shutdown()

    async def _accept_backlog(self, until: float) -> None:
        """Let the event loop accept the connections already waiting on the listening
        sockets: closing them would reset connections whose clients saw them accepted."""
        listening = [sock.fileno() for server in self.servers for sock in server.sockets]
        loop = asyncio.get_running_loop()
        while listening and loop.time() < until:
            ready, _, _ = select.select(listening, [], [], 0)
            if not ready:
                return
            await asyncio.sleep(0.001)


def _awaiting_first_request(connection: object) -> bool:
    """An HTTP connection (h11 or httptools) that has not yet delivered a whole request."""
    return getattr(connection, "cycle", ...) is None
