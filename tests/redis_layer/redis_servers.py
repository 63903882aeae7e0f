"""Real Redis servers for tests: addresses, private redis-server processes to freeze."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import redis

from app.core.config import Settings
from app.services.tenant_keys import TenantKeys
from tests.servers import free_port

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
STARTUP_SECONDS = 10.0


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is valid and free too."""
    for _ in range(200):
        port = random.randint(20000, 50000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def redis_settings(url: str, *, timeout: float = 0.25, cluster: bool = False) -> Settings:
    return Settings(
        environment="test", redis_url=url, redis_cluster=cluster, redis_timeout_seconds=timeout
    )


# Every slug handed out, so the session can delete what its tests left in the shared Redis.
ISSUED_SLUGS: list[str] = []


def new_slug() -> str:
    slug = f"t{uuid.uuid4().hex[:12]}"
    ISSUED_SLUGS.append(slug)
    return slug


def new_tenant() -> TenantKeys:
    """An invented tenant as Redis sees it: a fresh slug and id."""
    return TenantKeys(new_slug(), uuid.uuid4())


@dataclass
class RedisProcess:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def freeze(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.process.send_signal(signal.SIGCONT)


def start_redis(directory: Path, *extra: str, port: int | None = None) -> RedisProcess:
    port = port or free_port()
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        try:
            if redis.Redis(port=port, socket_timeout=0.5).ping():
                return RedisProcess(port, process)
        except redis.RedisError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError(f"redis-server on port {port} did not start")
        time.sleep(0.05)


def start_cluster_node(directory: Path, port: int, *, full_coverage: bool = False) -> RedisProcess:
    """One master of a test cluster; started again on the same port and directory, it
    rejoins with its nodes.conf (same id, same slots)."""
    return start_redis(
        directory,
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        str(directory / "nodes.conf"),
        "--cluster-node-timeout",
        str(CLUSTER_NODE_TIMEOUT_MS),
        # "no": slots of a master that is gone fail alone, the others keep serving (README).
        "--cluster-require-full-coverage",
        "yes" if full_coverage else "no",
        port=port,
    )


CLUSTER_NODE_TIMEOUT_MS = 1000


def start_cluster(
    directory: Path, masters: int = 3, *, full_coverage: bool = False, replicas: int = 0
) -> list[RedisProcess]:
    """`masters` masters with `replicas` replicas each, in `directory`, slots spread evenly;
    stop_redis each."""
    nodes: list[RedisProcess] = []
    try:
        for index in range(masters * (1 + replicas)):
            node_dir = directory / str(index)
            node_dir.mkdir()
            nodes.append(
                start_cluster_node(node_dir, free_cluster_port(), full_coverage=full_coverage)
            )
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{node.port}" for node in nodes),
                "--cluster-replicas",
                str(replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        wait_for_cluster_ok(nodes)
    except BaseException:
        for node in nodes:
            stop_redis(node)
        raise
    return nodes


def cluster_state(node: RedisProcess) -> str | None:
    try:
        info = redis.Redis(port=node.port, socket_timeout=1).cluster("info")
    except redis.RedisError:
        return None
    return str(info.get("cluster_state"))


def wait_for_cluster_ok(nodes: list[RedisProcess], timeout: float = 20.0) -> None:
    """Until every node says cluster_state:ok (and so knows every other one is up)."""
    deadline = time.monotonic() + timeout
    while True:
        states = [cluster_state(node) for node in nodes]
        if all(state == "ok" for state in states):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"cluster did not become ok: {states}")
        time.sleep(0.05)


def stop_redis(proc: RedisProcess) -> None:
    proc.thaw()  # a stopped process ignores SIGTERM until continued
    proc.process.terminate()
    try:
        proc.process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.process.kill()
        proc.process.wait(timeout=5)


class TestCluster:
    """A running test cluster whose masters a test may kill and start again."""

    __test__ = False  # not a test class, whatever its name

    def __init__(
        self, directory: Path, masters: int = 3, *, full_coverage: bool = False, replicas: int = 0
    ) -> None:
        self.directory = directory
        self.full_coverage = full_coverage
        self.nodes = start_cluster(
            directory, masters, full_coverage=full_coverage, replicas=replicas
        )
        self._owner = self.slot_owners(self.nodes[0])

    def slot_owners(self, asked: RedisProcess) -> list[int]:
        """Slot -> index of its master, as the node `asked` sees it now."""
        client = redis.Redis(port=asked.port, socket_timeout=5)
        try:
            ranges = client.execute_command("CLUSTER SLOTS")
        finally:
            client.close()
        port_index = {node.port: index for index, node in enumerate(self.nodes)}
        owners = [0] * 16384
        for start, end, master, *_ in ranges:
            for slot in range(int(start), int(end) + 1):
                owners[slot] = port_index[int(master[1])]
        return owners

    @property
    def masters(self) -> list[int]:
        """The indexes of the nodes that held slots when the cluster was made."""
        return sorted(set(self._owner))

    @property
    def url(self) -> str:
        """The app's REDIS_URL: the first node only (the others are found through it)."""
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}/0"

    def slot_owner(self, slot: int) -> int:
        """The index of the master that holds `slot`."""
        return self._owner[slot]

    def master_of(self, tenant_slug: str) -> int:
        """The index of the master that holds every key of the tenant (its hash tag's slot)."""
        from redis.crc import key_slot

        return self._owner[key_slot(f"{{{tenant_slug}}}".encode())]

    def kill(self, index: int) -> None:
        """SIGKILL, as a crashed pod: connections drop, the port refuses."""
        process = self.nodes[index].process
        process.kill()
        process.wait(timeout=5)

    def restart(self, index: int) -> None:
        """Start the master again with its nodes.conf; returns once every node says ok."""
        self.nodes[index] = start_cluster_node(self.directory / str(index), self.nodes[index].port)
        wait_for_cluster_ok(self.nodes)

    def wait_for_state(self, state: str, timeout: float = 10.0) -> None:
        """Until every running node says cluster_state:`state`."""
        deadline = time.monotonic() + timeout
        while True:
            running = [node for node in self.nodes if node.process.poll() is None]
            states = [cluster_state(node) for node in running]
            if all(found == state for found in states):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster did not become {state}: {states}")
            time.sleep(0.05)

    def stop(self) -> None:
        for node in self.nodes:
            stop_redis(node)


class RestartableRedis:
    """A redis-server of the test's own, which it may stop, start again on the same port
    (with its data: append-only file on), or freeze (SIGSTOP) without hurting others."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.process: RedisProcess | None = start_redis(directory, "--appendonly", "yes")
        self.port = self.process.port
        self.url = self.process.url

    def stop(self) -> None:
        if self.process is not None:
            stop_redis(self.process)
            self.process = None

    def start(self) -> None:
        self.process = start_redis(self.directory, "--appendonly", "yes", port=self.port)

    def freeze(self) -> None:
        assert self.process is not None
        self.process.freeze()

    def thaw(self) -> None:
        assert self.process is not None
        self.process.thaw()
