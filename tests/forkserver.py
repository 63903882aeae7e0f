"""Serves Tessera the way `tessera serve` does, in forked children of one process that has
imported it once, so a test can start, signal and reap many servers in seconds (a fresh
interpreter spends seconds on imports alone).

    python -m tests.forkserver        # then, one command a line on stdin:
    serve PORT                        # → the child's pid
    poll PID                          # → its exit code (negative: the signal that ended
                                      #   it), or "running"

Settings come from the environment, as in production, read once here. Children's output goes
to stderr.
"""

from __future__ import annotations

import os
import sys
import traceback


def _child(port: int) -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)  # stdout carries this process's answers
    code = 0
    try:
        from app.commands.serve import serve

        serve("127.0.0.1", port)  # SIGTERM: a graceful stop, then the signal is re-raised
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def main() -> None:
    import gc

    import app.commands.serve  # noqa: F401
    import app.main

    # What takes the seconds, done once: every child inherits the imports and the app that
    # `serve` then finds at app.main:app. Frozen, the app's objects are not scanned again
    # by the collection its lifespan starts with.
    _ = app.main.app
    gc.freeze()

    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        if command == "serve":
            pid = os.fork()
            if pid == 0:
                _child(int(argument))
            print(pid, flush=True)
        elif command == "poll":
            pid, status = os.waitpid(int(argument), os.WNOHANG)
            print(os.waitstatus_to_exitcode(status) if pid else "running", flush=True)


if __name__ == "__main__":
    main()
