"""A real Redis Cluster for the tests: 3 primaries and 3 replicas of the Debian redis-server on
free loopback ports, made with ``redis-cli --cluster create``."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from harness import free_port, wait_port


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (each node needs a client port and a bus port)."""
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


class ClusterNode:
    """One redis-server of the cluster, with its own directory (nodes.conf, appendonly)."""

    def __init__(self, port: int, bus_port: int, root: Path) -> None:
        self.port = port
        self.bus_port = bus_port
        self.dir = root / str(port)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self._client: redis.Redis | None = None

    def client(self) -> redis.Redis:
        """A synchronous client for the harness's own checks (faster than redis-cli)."""
        if self._client is None:
            self._client = redis.Redis(port=self.port, decode_responses=True, socket_timeout=5)
        return self._client

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--cluster-port", str(self.bus_port), "--bind", "127.0.0.1",
             "--dir", str(self.dir), "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", "2000", "--appendonly", "yes", "--save", "",
             "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def cli(self, *args: str) -> str:
        """A command's reply (errors as text, like redis-cli)."""
        try:
            return self.client().execute_command(*args)
        except redis.RedisError as exc:
            return f"ERR {exc}"

    def info(self, section: str) -> dict:
        return self.client().info(section)

    def cluster_ok(self) -> bool:
        try:
            reply = self.client().execute_command("CLUSTER", "INFO")
        except redis.RedisError:
            return False
        if isinstance(reply, dict):
            return reply.get("cluster_state") == "ok"
        return "cluster_state:ok" in reply

    def owns(self, key: str) -> bool:
        """Whether this node serves ``key`` (anything but the owning primary answers MOVED)."""
        try:
            self.client().execute_command("EXISTS", key)
        except redis.ResponseError:
            return False
        return True


class RedisClusterServers:
    """A Redis Cluster of ``primaries`` primaries with one replica each.

    :param primaries: how many primaries (hash slots are split evenly).
    """

    def __init__(self, primaries: int = 3) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="redis-cluster-"))
        ports = _free_ports(primaries * 4)
        self.nodes = [ClusterNode(ports[2 * i], ports[2 * i + 1], self.root) for i in range(primaries * 2)]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def start(self, timeout: float = 60.0) -> "RedisClusterServers":
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        out = subprocess.run([shutil.which("redis-cli") or "redis-cli", "--cluster", "create", *addresses,
                              "--cluster-replicas", "1", "--cluster-yes"],
                             capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{out.stdout}\n{out.stderr}")
        self.wait_healthy(timeout)
        return self

    def live(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def primaries(self) -> list[ClusterNode]:
        return [n for n in self.live() if n.info("replication").get("role") == "master"]

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Until every live node says the cluster is ok and every primary has a replica online
        that has caught up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = self.live()
            primaries = self.primaries()
            if (all(n.cluster_ok() for n in live) and len(primaries) * 2 == len(live)
                    and all(self._replica_synced(p) for p in primaries)):
                return
            time.sleep(0.05)
        raise TimeoutError(f"the cluster is not healthy after {timeout}s")

    @staticmethod
    def _replica_synced(primary: ClusterNode) -> bool:
        info = primary.info("replication")
        replica = info.get("slave0")
        return (isinstance(replica, dict) and replica.get("state") == "online"
                and replica.get("offset") == info.get("master_repl_offset"))

    def primary_for(self, key: str) -> ClusterNode:
        """The live primary that owns ``key``'s slot."""
        for node in self.primaries():
            if node.owns(key):
                return node
        raise LookupError(f"no live primary owns {key!r}")

    def wait_failover(self, dead: ClusterNode, timeout: float = 30.0) -> None:
        """Until a replica of ``dead`` has taken over and the cluster is ok again."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = self.live()
            if live and all(n.cluster_ok() for n in live):
                return
            time.sleep(0.1)
        raise TimeoutError(f"no failover of {dead.port} after {timeout}s")

    def replica_of(self, primary: ClusterNode) -> ClusterNode:
        for node in self.live():
            info = node.info("replication")
            if info.get("role") == "slave" and info.get("master_port") == primary.port:
                return node
        raise LookupError(f"no live replica of {primary.port}")

    def manual_failover(self, primary: ClusterNode, timeout: float = 30.0) -> ClusterNode:
        """CLUSTER FAILOVER on ``primary``'s replica (a planned switch, nothing killed); returns
        the new primary once the cluster is healthy again."""
        replica = self.replica_of(primary)
        replica.cli("CLUSTER", "FAILOVER")
        deadline = time.monotonic() + timeout
        while replica.info("replication").get("role") != "master":
            if time.monotonic() > deadline:
                raise TimeoutError(f"{replica.port} did not take over from {primary.port}")
            time.sleep(0.05)
        self.wait_healthy(timeout)
        return replica

    def flushall(self, timeout: float = 30.0) -> None:
        """Empty every primary and wait for the replicas to follow."""
        primaries = self.primaries()
        for node in primaries:
            node.cli("FLUSHALL")
        deadline = time.monotonic() + timeout
        while not all(self._replica_synced(p) for p in primaries):
            if time.monotonic() > deadline:
                raise TimeoutError("replicas did not follow FLUSHALL")
            time.sleep(0.01)

    def cleanup(self) -> None:
        for node in self.nodes:
            node.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def cluster_available() -> bool:
    """Whether redis-server is recent enough for sharded pub/sub (Redis >= 7)."""
    binary = shutil.which("redis-server")
    if binary is None or shutil.which("redis-cli") is None:
        return False
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    version = out.split("v=", 1)[-1].split()[0] if "v=" in out else "0"
    return int(version.split(".")[0]) >= 7
