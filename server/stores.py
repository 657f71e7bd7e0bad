"""Stores: the shared-state seam. Without ``REDIS_URL`` every store lives in this process;
with it, every store lives in Redis and is shared by all nodes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import redis.asyncio as aioredis

from .config import Config
from realtime_channels.channel_log import ChannelBounds, ChannelLog, MemoryChannelLog, OnPublication, OnResync
from realtime_channels.redis_channel_log import RedisChannelLog
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
    redis: aioredis.Redis | None = None

    @property
    def shared(self) -> bool:
        return self.redis is not None

    async def ping(self) -> float | None:
        """Round-trip time to Redis in seconds (0 without Redis); None when unreachable."""
        if self.redis is None:
            return 0.0
        start = time.perf_counter()
        try:
            await self.redis.ping()
        except Exception:
            return None
        return time.perf_counter() - start

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()


def redis_client(url: str, max_connections: int = 100, pool_timeout: float = 10.0,
                 **overrides: object) -> aioredis.Redis:
    """A client for ``url``; short timeouts so a Redis outage is noticed, not waited out.

    :param max_connections: connections the client opens at most. redis-py's default pool
        raises "Too many connections" at its cap, so a connect storm failed handlers; this
        pool makes a command wait for a free connection instead.
    :param pool_timeout: seconds a command waits for a free connection before it fails
        (the handler then answers an "unavailable" error ack).

    ``redis+sentinel://[:password@]host:port[,host:port...]/<service>[/<db>]`` asks the
    sentinels for the current master of ``service`` (and again after a failover).
    """
    options: dict = dict(socket_connect_timeout=2, socket_keepalive=True, health_check_interval=10,
                         retry_on_timeout=False)
    options.update(overrides)
    if url.startswith("redis+sentinel://"):
        return _sentinel_master(url, options)
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections,
                                                    timeout=pool_timeout, **options)
    return aioredis.Redis.from_pool(pool)


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
    client = redis_client(url, config.redis.max_connections, config.redis.pool_timeout)
    bounds = channel_bounds(config)
    return Stores(
        channel_log=lambda on_publication, on_resync: RedisChannelLog(
            client, prefix=prefix, bounds=bounds, on_publication=on_publication, on_resync=on_resync),
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
