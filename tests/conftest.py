"""Fixtures: real redis-server, real server processes, the official JS client."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path
from typing import AsyncIterator, Callable, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The shared package (channels/realtime_channels, its own distribution) is taken from this
# checkout, by the tests and by every process they start, as ``server`` is (the working
# directory): an environment installed from another checkout must not supply an older copy.
CHANNELS = str(Path(__file__).resolve().parent.parent / "channels")
sys.path.insert(0, CHANNELS)
os.environ["PYTHONPATH"] = os.pathsep.join([CHANNELS, *filter(None, [os.environ.get("PYTHONPATH")])])

from cluster_harness import RedisClusterServers, cluster_available  # noqa: E402
from harness import JSClient, RedisServer, ServerProcess, TcpProxy  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    for tool in ("node", "redis-server"):
        if shutil.which(tool) is None:
            raise pytest.UsageError(f"{tool} is not installed: run the README's test command (make test)")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A shared redis-server, emptied before each test."""
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    redis_server.cli("FLUSHALL")
    return redis_server.url


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, for tests that stop or restart it."""
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
async def clients(own_redis):
    """(the server's kind of client for ``own_redis``, a separate client for looking at Redis),
    both closed after."""
    import redis.asyncio as aioredis

    from server.stores import redis_client

    made = [redis_client(own_redis.url), aioredis.Redis.from_url(own_redis.url)]
    yield made
    for c in made:
        await c.aclose()


def _cluster() -> Iterator[RedisClusterServers]:
    if not cluster_available():
        pytest.skip("Redis Cluster tests need redis-server >= 7 (sharded pub/sub)")
    cluster = RedisClusterServers().start()
    yield cluster
    cluster.cleanup()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """A shared Redis Cluster (3 primaries, 3 replicas); skipped where redis-server < 7."""
    yield from _cluster()


@pytest.fixture
def cluster_url(redis_cluster: RedisClusterServers) -> str:
    """The shared Redis Cluster, emptied before each test."""
    redis_cluster.flushall()
    return redis_cluster.url


@pytest.fixture
def own_redis_cluster() -> Iterator[RedisClusterServers]:
    """A Redis Cluster of this test's own, for tests that kill its nodes."""
    yield from _cluster()


@pytest.fixture(scope="session")
def redis_shards() -> Iterator[list[RedisServer]]:
    """Three independent redis-servers, for ``redis+shards://`` (channels spread over them)."""
    started = [RedisServer().start() for _ in range(3)]
    yield started
    for server in started:
        server.cleanup()


def shards_url_of(instances: list[RedisServer]) -> str:
    """The ``redis+shards://`` URL naming ``instances`` in order."""
    return "redis+shards://" + ",".join(f"127.0.0.1:{s.port}" for s in instances) + "/0"


@pytest.fixture
def shards_url(redis_shards: list[RedisServer]) -> str:
    """The three shared instances as one ``redis+shards://`` URL, each emptied before each test."""
    for server in redis_shards:
        if server.proc is None or server.proc.poll() is not None:
            server.start()
        server.cli("FLUSHALL")
    return shards_url_of(redis_shards)


@pytest.fixture
def servers() -> Iterator[Callable[..., ServerProcess]]:
    """Start ``python -m server`` processes: ``servers(env={...})``; all stopped at the end."""
    started: list[ServerProcess] = []

    def start(env: dict[str, str] | None = None, wait: bool = True, **kwargs) -> ServerProcess:
        proc = ServerProcess(env=env, **kwargs)
        started.append(proc)
        return proc.start(wait=wait)

    yield start
    for proc in started:
        proc.kill()


@pytest.fixture
def server(servers) -> ServerProcess:
    """One node on the embedded in-memory default."""
    return servers()


@pytest.fixture
async def js() -> AsyncIterator[JSClient]:
    client = await JSClient().start()
    yield client
    await client.close()


@pytest.fixture
async def proxies() -> AsyncIterator[Callable[..., asyncio.Future]]:
    made: list[TcpProxy] = []

    async def make(ports: list[int], refuse_websocket: bool = False) -> TcpProxy:
        proxy = await TcpProxy(ports, refuse_websocket).start()
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        await proxy.stop()


# The longest groups (a minute or more each on a quiet machine), started first so that the
# workers finish together; the rest keep the order they are collected in.
LONGEST_FIRST = ("redis-cluster", "test_pages.py", "test_delivery_load.py", "test_hostile.py",
                 "test_recovery.py", "test_browser.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Groups for pytest-xdist's ``--dist loadgroup`` (make test runs 2 workers): each file is
    one group, run by one worker (its module fixtures set up once), except that every file with
    a test on the shared Redis Cluster joins one group, so that one worker starts that cluster,
    not each; the groups of LONGEST_FIRST come first (addopts has --no-loadscope-reorder)."""
    cluster_files = {item.path for item in items if "redis_cluster" in getattr(item, "fixturenames", ())}
    groups = {}
    for item in items:
        group = "redis-cluster" if item.path in cluster_files else item.path.name
        groups[item] = group
        item.add_marker(pytest.mark.xdist_group(group))
    rank = {group: i for i, group in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(groups[item], len(rank)))  # stable: files stay in order
