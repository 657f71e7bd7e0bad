"""Stores: the shared-state seam. Without ``REDIS_URL`` every store lives in this process;
with it, every store lives in Redis and is shared by all nodes."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Callable

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from .cluster_client import BoundedRedisCluster
from .config import Config
from realtime_channels.channel_log import ChannelBounds, ChannelLog, MemoryChannelLog, OnPublication, OnResync
from realtime_channels.redis_channel_log import RedisChannelLog
from realtime_channels.sharded_redis import ShardedRedis
from realtime_channels.sharding import instance_name, is_shards_url, shard_urls
from .documents import DocumentStore, MemoryDocumentStore, RedisDocumentStore
from .game_lobby import GameLobbyStore, MemoryGameLobbyStore, RedisGameLobbyStore
from .idempotency import IdempotencyStore, MemoryIdempotencyStore, RedisIdempotencyStore
from .login_throttle import LoginThrottle, MemoryLoginThrottle, RedisLoginThrottle
from .operator_sessions import MemoryOperatorSessionStore, OperatorSessionStore, RedisOperatorSessionStore
from .pending import MemoryPendingDeliveries, PendingDeliveries, RedisPendingDeliveries
from .presence import MemoryPresenceRegistry, PresenceRegistry, RedisPresenceRegistry
from .sessions import MemorySessionStore, RedisSessionStore, SessionStore


# Builds the channel log, given the callbacks its owner (the RealtimeManager) takes notifications with.
ChannelLogFactory = Callable[[OnPublication, OnResync], ChannelLog]


@dataclass
class Stores:
    channel_log: ChannelLogFactory
    sessions: SessionStore
    idempotency: IdempotencyStore
    presence: PresenceRegistry
    pending: PendingDeliveries
    documents: DocumentStore
    game_lobby: GameLobbyStore
    operator_sessions: OperatorSessionStore
    login_throttle: LoginThrottle
    redis: aioredis.Redis | RedisCluster | ShardedRedis | None = None

    @property
    def shared(self) -> bool:
        return self.redis is not None

    async def ping(self) -> float | None:
        """Round-trip time to Redis in seconds (0 without Redis); None when unreachable.

        With several sharded instances: the slowest answer, and None only when none answers.
        A node that lost one instance still serves the channels of the others, and no other
        node can serve that instance's channels either (as a cluster node's PING asks one
        node, not every primary): taking every node out of rotation would turn a partial
        outage into a full one. Meanwhile commands on the lost instance's channels fail (an
        "unavailable" error ack) and its pub/sub readers log that they are reconnecting.
        """
        if self.redis is None:
            return 0.0
        if isinstance(self.redis, ShardedRedis):
            answers = await asyncio.gather(*(_timed_ping(s) for s in self.redis.shards))
            reached = [a for a in answers if a is not None]
            return max(reached) if reached else None
        return await _timed_ping(self.redis)

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()


async def _timed_ping(client: aioredis.Redis | RedisCluster) -> float | None:
    start = time.perf_counter()
    try:
        await client.ping()
    except Exception:
        return None
    return time.perf_counter() - start


# Schemes that name a Redis Cluster by its seed nodes: `redis+cluster://h1:p1,h2:p2`.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss",
                   "valkey+cluster": "redis", "valkeys+cluster": "rediss"}
# Valkey's own names for the schemes redis-py knows.
VALKEY_SCHEMES = {"valkey": "redis", "valkeys": "rediss"}


class RedisProbeError(Exception):
    """Start-up could not ask the Redis named by a plain URL whether it is a cluster node."""


def redis_client(url: str, max_connections: int = 100, pool_timeout: float = 10.0, *,
                 cluster: bool | None = None,
                 **overrides: object) -> aioredis.Redis | RedisCluster | ShardedRedis:
    """A client for ``url``; short timeouts so a Redis outage is noticed, not waited out.

    :param max_connections: connections the client opens at most (per cluster node with a
        cluster, per instance with shards). redis-py's default pool raises "Too many
        connections" at its cap, so a connect storm failed handlers; this pool makes a command
        wait for a free connection instead (the cluster client waits the same way, see
        :class:`BoundedRedisCluster`).
    :param pool_timeout: seconds a command waits for a free connection before it fails
        (the handler then answers an "unavailable" error ack).
    :param cluster: whether ``url`` names a Redis Cluster; None asks :func:`is_cluster`.

    ``redis+sentinel://[:password@]host:port[,host:port...]/<service>[/<db>]`` asks the
    sentinels for the current master of ``service`` (and again after a failover).
    ``redis+cluster://[user:password@]host:port[,host:port...]`` (``rediss+cluster://`` for
    TLS) names seed nodes of a Redis Cluster; a plain ``redis://`` or ``rediss://`` URL to
    any cluster node is recognised as a cluster too. ``valkey://`` is ``redis://``.
    ``redis+shards://[user:password@]host:port[,host:port...][/<db>]`` (``rediss+shards://``
    for TLS) names independent instances, each channel on one of them by jump consistent hash
    of its hash tag (:mod:`realtime_channels.sharding`): a :class:`ShardedRedis`.
    """
    options: dict = dict(socket_connect_timeout=2, socket_keepalive=True, health_check_interval=10,
                         retry_on_timeout=False)
    options.update(overrides)
    if url.startswith("redis+sentinel://"):
        return _sentinel_master(url, options)
    if is_shards_url(url):
        urls = shard_urls(url)
        return ShardedRedis([redis_client(u, max_connections, pool_timeout, cluster=False, **overrides)
                             for u in urls], [instance_name(u) for u in urls])
    url = _redis_scheme(url)
    if cluster is None:
        cluster = is_cluster(url)
    if cluster:
        return _cluster_client(url, max_connections, pool_timeout, options)
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections,
                                                    timeout=pool_timeout, **options)
    return aioredis.Redis.from_pool(pool)


def _redis_scheme(url: str) -> str:
    """``url`` with a scheme redis-py knows (Valkey's names mapped to Redis's)."""
    scheme, sep, rest = url.partition("://")
    return f"{VALKEY_SCHEMES[scheme]}://{rest}" if sep and scheme in VALKEY_SCHEMES else url


def is_cluster(url: str, timeout: float = 10.0) -> bool:
    """Whether ``url`` names a Redis Cluster: by its scheme, or else by asking the server.

    The question is asked once, synchronously, while the app is built (before the event loop
    serves anything): the stores and the bus need the right client type from the start, and
    an answer cannot change while the process runs. A server that cannot be reached is asked
    again until ``timeout`` seconds have passed; then start-up stops (a guess could run a
    cluster deployment on a single-node client, failing every command with MOVED while
    ``/readyz`` looked fine).

    :param timeout: seconds to keep asking an unreachable server.
    :raises RedisProbeError: the server did not answer within ``timeout``.
    """
    url = _redis_scheme(url)
    scheme = url.partition("://")[0]
    if scheme in CLUSTER_SCHEMES:
        return True
    if scheme not in ("redis", "rediss"):
        return False  # unix:// (a cluster has no Unix sockets), sentinel, shards
    import redis

    deadline = time.monotonic() + timeout
    while True:
        probe = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        try:
            # INFO cluster answers on every Redis (cluster_enabled:0 or 1), unlike CLUSTER INFO.
            return bool(probe.info("cluster").get("cluster_enabled"))
        except redis.ResponseError:
            return False  # INFO renamed or refused (some managed services): not a cluster we can use
        except redis.RedisError as exc:
            if time.monotonic() >= deadline:
                raise RedisProbeError(f"cannot reach Redis at {_redact(url)} to tell a single Redis from a "
                                      f"cluster: {exc}") from exc
            time.sleep(0.5)
        finally:
            probe.close()


def _redact(url: str) -> str:
    """``url`` without its password (for messages)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def _cluster_client(url: str, max_connections: int, pool_timeout: float, options: dict) -> RedisCluster:
    """A :class:`BoundedRedisCluster` from a plain URL to one node or a ``+cluster`` URL of seeds."""
    from urllib.parse import unquote, urlsplit

    from redis.asyncio.cluster import ClusterNode

    scheme = url.partition("://")[0]
    base = CLUSTER_SCHEMES.get(scheme, scheme)
    parts = urlsplit(url)
    seeds = []
    for item in parts.netloc.rpartition("@")[2].split(","):
        host, _, port = item.rpartition(":")
        seeds.append(ClusterNode(host or item, int(port) if port.isdigit() else 6379))
    path = [p for p in parts.path.split("/") if p]
    if path and path[0] != "0":
        raise ValueError(f"a Redis Cluster has only database 0, the URL names {path[0]!r}")
    kwargs: dict = dict(options)
    kwargs.pop("retry_on_timeout", None)  # the cluster client retries through its own Retry
    if parts.username:
        kwargs["username"] = unquote(parts.username)
    if parts.password:
        kwargs["password"] = unquote(parts.password)
    if base == "rediss":
        kwargs["ssl"] = True
    return BoundedRedisCluster(startup_nodes=seeds, max_connections=max_connections,
                               pool_timeout=pool_timeout, **kwargs)


def _sentinel_master(url: str, options: dict) -> aioredis.Redis:
    from urllib.parse import urlsplit

    from redis.asyncio.sentinel import Sentinel

    parts = urlsplit(url)
    hosts = []
    for item in parts.netloc.rpartition("@")[2].split(","):
        host, _, port = item.rpartition(":")
        hosts.append((host or item, int(port) if port.isdigit() else 26379))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("a sentinel URL names the service: redis+sentinel://host:26379/mymaster")
    service, db = path[0], int(path[1]) if len(path) > 1 else 0
    password = parts.password
    sentinel = Sentinel(hosts, socket_connect_timeout=options["socket_connect_timeout"])
    return sentinel.master_for(service, db=db, password=password, **options)


def channel_bounds(config: Config) -> ChannelBounds:
    d = config.delivery
    # A publication holds one event a client (or the API) sent, plus the envelope around it.
    return ChannelBounds(max_length=d.log_max_length, max_age=d.log_max_age, dedupe_ttl=d.dedupe_ttl,
                         max_data_size=max(config.server.max_payload, config.api.max_body_bytes) + 4096)


def memory_stores(config: Config) -> Stores:
    d = config.delivery
    bounds = channel_bounds(config)
    return Stores(
        channel_log=lambda on_publication, on_resync: MemoryChannelLog(
            bounds, on_publication=on_publication, on_resync=on_resync),
        sessions=MemorySessionStore(),
        idempotency=MemoryIdempotencyStore(d.dedupe_max_reply_bytes, d.dedupe_max_bytes),
        presence=MemoryPresenceRegistry(),
        pending=MemoryPendingDeliveries(d.direct_max_pending),
        documents=MemoryDocumentStore(),
        game_lobby=MemoryGameLobbyStore(),
        operator_sessions=MemoryOperatorSessionStore(),
        login_throttle=MemoryLoginThrottle(config.admin.login_attempts, config.admin.login_lockout),
    )


def redis_stores(config: Config) -> Stores:
    url, prefix, d = config.redis.url, config.redis.key_prefix, config.delivery
    cluster = is_cluster(url)  # asked once (see is_cluster)
    client = redis_client(url, config.redis.max_connections, config.redis.pool_timeout, cluster=cluster)
    bounds = channel_bounds(config)
    return Stores(
        channel_log=lambda on_publication, on_resync: RedisChannelLog(
            client, prefix=prefix, bounds=bounds, sharded=cluster, on_publication=on_publication,
            on_resync=on_resync, replicas_ack=config.redis.replicas_ack,
            replicas_ack_timeout=config.redis.replicas_ack_timeout),
        sessions=RedisSessionStore(client, prefix),
        idempotency=RedisIdempotencyStore(client, prefix, d.dedupe_max_reply_bytes),
        presence=RedisPresenceRegistry(client, prefix),
        pending=RedisPendingDeliveries(client, prefix, d.direct_max_pending),
        documents=RedisDocumentStore(client, prefix),
        game_lobby=RedisGameLobbyStore(client, prefix),
        operator_sessions=RedisOperatorSessionStore(client, prefix),
        login_throttle=RedisLoginThrottle(client, prefix, config.admin.login_attempts, config.admin.login_lockout),
        redis=client,
    )


def build_stores(config: Config) -> Stores:
    return redis_stores(config) if config.redis.url else memory_stores(config)
