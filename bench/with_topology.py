"""Starts one Redis, or a Redis Cluster of 3 masters + 3 replicas, then runs the server command
with ``REDIS_URL`` pointing at it (bench/cluster.sh's counterpart of bench/with_redis.sh)::

    python bench/with_topology.py --topology single|cluster --state FILE -- COMMAND...

The cluster is tests/cluster_harness.py's ``RedisClusterServers`` (Debian's redis-server on
loopback ports, ``cluster-enabled yes``, appendonly on, made with ``redis-cli --cluster
create``); the single Redis runs with the same persistence (appendonly on, no RDB), so the two
differ only in the topology. Every redis-server and the command are children of this process:
they inherit its CPU pinning (bench/lib.sh's ``taskset``) and bench/lib.sh's stop (SIGTERM to
the process group) stops them all; this process then removes the Redis directories.

``--state FILE`` receives one JSON object once the command has started: the topology, the URL,
each Redis node's port, and the command's pid, for bench/cluster_driver.py's ``INFO cpu``
readings and the server's own CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from cluster_harness import RedisClusterServers  # noqa: E402 - tests/ is not a package
from harness import free_port, wait_port  # noqa: E402


class SingleRedis:
    """One redis-server, persistence as a cluster node's (appendonly yes, no RDB)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="redis-single-"))
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "SingleRedis":
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(self.port),
             "--bind", "127.0.0.1", "--dir", str(self.root), "--appendonly", "yes", "--save", "",
             "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        return self

    def ports(self) -> list[int]:
        return [self.port]

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def node_ports(redis_: SingleRedis | RedisClusterServers) -> list[int]:
    """Every Redis node's client port (masters and replicas; bench/cluster_driver.py asks each
    its role)."""
    if isinstance(redis_, SingleRedis):
        return redis_.ports()
    return [n.port for n in redis_.nodes]


def main(argv: list[str]) -> int:
    if "--" not in argv:
        raise SystemExit("usage: with_topology.py --topology single|cluster --state FILE -- COMMAND...")
    split = argv.index("--")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--topology", choices=("single", "cluster"), required=True)
    p.add_argument("--state", required=True, help="where to write the JSON state (ports, the command's pid)")
    args = p.parse_args(argv[:split])
    command = argv[split + 1:]

    stopping = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    redis_: SingleRedis | RedisClusterServers = SingleRedis() if args.topology == "single" else RedisClusterServers(3)
    proc: subprocess.Popen | None = None
    try:
        redis_.start()
        proc = subprocess.Popen(command, env={**os.environ, "REDIS_URL": redis_.url})
        Path(args.state).write_text(json.dumps({
            "topology": args.topology, "url": redis_.url, "ports": node_ports(redis_), "server_pid": proc.pid}))
        return proc.wait()
    except KeyboardInterrupt:
        return 0 if stopping else 130
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        redis_.cleanup()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
