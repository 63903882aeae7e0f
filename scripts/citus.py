"""A throwaway three-node Citus cluster on loopback: a coordinator and two workers.

    python scripts/citus.py start [--dir DIR]   # prints DATABASE_URL=... (the coordinator)
    python scripts/citus.py stop --dir DIR       # stops the nodes and removes DIR

Needs Citus installed into the local PostgreSQL (docs/citus.md says how). Each node is its
own data directory under DIR, on a free loopback port, with `citus` preloaded, schema-based
sharding on, prepared transactions allowed (Citus commits DDL with two-phase commit) and
trust authentication on loopback only (the coordinator opens worker connections as the
tenant roles, which have no password). As root, the nodes run as the `postgres` user,
since PostgreSQL refuses root. Tests use `CitusCluster` directly (tests/citus/).
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"

NODE_SETTINGS = """
listen_addresses = '{host}'
port = {port}
unix_socket_directories = '{socket_dir}'
{citus}max_prepared_transactions = 100
max_connections = 200
shared_buffers = 64MB
fsync = off
synchronous_commit = off
full_page_writes = off
log_min_messages = warning
"""

CITUS_SETTINGS = """shared_preload_libraries = 'citus'
citus.enable_schema_based_sharding = on
"""

HBA = f"""local all all trust
host all all {HOST}/32 trust
"""


def pg_config() -> str | None:
    """The pg_config of the local PostgreSQL: $PG_CONFIG, else the newest Debian server's."""
    if os.environ.get("PG_CONFIG"):
        return os.environ["PG_CONFIG"]
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_config"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return found[-1] if found else shutil.which("pg_config")


def _pg_config_value(config: str, option: str) -> str:
    return subprocess.run(
        [config, option], check=True, capture_output=True, text=True
    ).stdout.strip()


def citus_missing() -> str | None:
    """Why no local Citus cluster can be started here, or None when one can."""
    config = pg_config()
    if config is None or not Path(config).exists():
        return "no PostgreSQL server installation found (pg_config)"
    bindir = Path(_pg_config_value(config, "--bindir"))
    libdir = Path(_pg_config_value(config, "--pkglibdir"))
    sharedir = Path(_pg_config_value(config, "--sharedir"))
    for binary in ("initdb", "pg_ctl", "postgres", "psql"):
        if not (bindir / binary).exists():
            return f"{bindir / binary} is missing"
    if not (libdir / "citus.so").exists() or not (sharedir / "extension/citus.control").exists():
        return f"Citus is not installed into the PostgreSQL of {config} (see docs/citus.md)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser to start PostgreSQL as another user"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Node:
    name: str
    port: int
    data: Path

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/postgres"

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"


class CitusCluster:
    """A coordinator and `workers` workers under one directory; `start()`, then `stop()`.

    `citus=False, workers=0` is the same server without Citus, for comparisons."""

    def __init__(self, base: Path | None = None, workers: int = 2, *, citus: bool = True) -> None:
        self.base = base or Path(tempfile.mkdtemp(prefix="tessera-citus-"))
        self.citus = citus
        config = pg_config()
        assert config is not None, "no pg_config"
        self.bindir = Path(_pg_config_value(config, "--bindir"))
        names = ["coordinator"] + [f"worker{i + 1}" for i in range(workers)]
        self.nodes = [Node(name, _free_port(), self.base / name) for name in names]

    @property
    def coordinator(self) -> Node:
        return self.nodes[0]

    @property
    def workers(self) -> list[Node]:
        return self.nodes[1:]

    @property
    def url(self) -> str:
        """The coordinator's database, where Tessera connects."""
        return self.coordinator.url

    def _as_postgres(self, command: Sequence[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *command]
        return list(command)

    def _run(self, command: Sequence[str]) -> str:
        result = subprocess.run(
            self._as_postgres(command), capture_output=True, text=True, timeout=120
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")
        return result.stdout

    def psql(self, node: Node, sql: str) -> str:
        return self._run(
            [
                str(self.bindir / "psql"),
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                HOST,
                "-p",
                str(node.port),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                sql,
            ]
        )

    def _init_and_start(self, node: Node) -> None:
        self._run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(node.data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ]
        )
        with (node.data / "postgresql.conf").open("a") as conf:
            conf.write(
                NODE_SETTINGS.format(
                    host=HOST,
                    port=node.port,
                    socket_dir=self.base,
                    citus=CITUS_SETTINGS if self.citus else "",
                )
            )
        (node.data / "pg_hba.conf").write_text(HBA)
        self._run(
            [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(node.data),
                "-l",
                str(self.base / f"{node.name}.log"),
                "-w",
                "-t",
                "60",
                "start",
            ]
        )
        if self.citus:
            self.psql(node, "CREATE EXTENSION citus")

    def start(self) -> CitusCluster:
        self.base.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres", "postgres")
        try:
            with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
                list(pool.map(self._init_and_start, self.nodes))
            if not self.citus:
                return self
            self.psql(
                self.coordinator,
                f"SELECT citus_set_coordinator_host('{HOST}', {self.coordinator.port})",
            )
            for worker in self.workers:
                self.psql(self.coordinator, f"SELECT citus_add_node('{HOST}', {worker.port})")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every node that runs and remove the cluster's directory."""

        def stop_node(node: Node) -> None:
            if (node.data / "postmaster.pid").exists():
                subprocess.run(
                    self._as_postgres(
                        [
                            str(self.bindir / "pg_ctl"),
                            "-D",
                            str(node.data),
                            "-m",
                            "fast",
                            "-w",
                            "stop",
                        ]
                    ),
                    capture_output=True,
                    timeout=120,
                )

        with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            list(pool.map(stop_node, self.nodes))
        shutil.rmtree(self.base, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        """The end of every node's server log, to explain a failure."""
        out = []
        for node in self.nodes:
            log = self.base / f"{node.name}.log"
            if log.exists():
                out.append(f"--- {node.name}\n" + "\n".join(log.read_text().splitlines()[-lines:]))
        return "\n".join(out)


def _cluster_at(base: Path) -> CitusCluster:
    """The cluster started under `base` (the ports are read back from the data directories)."""
    cluster = CitusCluster.__new__(CitusCluster)
    cluster.base = base
    config = pg_config()
    assert config is not None
    cluster.bindir = Path(_pg_config_value(config, "--bindir"))
    cluster.nodes = []
    for name in ["coordinator"] + sorted(p.name for p in base.glob("worker*") if p.is_dir()):
        conf = (base / name / "postgresql.conf").read_text()
        port = int([line for line in conf.splitlines() if line.startswith("port = ")][-1][7:])
        cluster.nodes.append(Node(name, port, base / name))
    return cluster


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--dir", type=Path, help="where the nodes live (start: a new temp dir)")
    args = parser.parse_args()
    if args.action == "stop":
        if args.dir is None:
            parser.error("stop needs --dir")
        _cluster_at(args.dir).stop()
        return 0
    missing = citus_missing()
    if missing:
        print(f"cannot start a Citus cluster: {missing}", file=sys.stderr)
        return 1
    cluster = CitusCluster(args.dir).start()
    print(f"DATABASE_URL={cluster.url}")
    print(f"CITUS_DIR={cluster.base}")
    print("workers: " + ", ".join(w.address for w in cluster.workers), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
