"""Stores: the shared-state seam. Without ``REDIS_URL`` every store lives in this process;
with it, every store lives in Redis and is shared by all nodes."""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from .config import Config
from .event_log import EventLog, MemoryEventLog, RedisEventLog
from .idempotency import IdempotencyStore, MemoryIdempotencyStore, RedisIdempotencyStore
from .pending import MemoryPendingDeliveries, PendingDeliveries, RedisPendingDeliveries
from .presence import MemoryPresenceRegistry, PresenceRegistry, RedisPresenceRegistry
from .sessions import MemorySessionStore, RedisSessionStore, SessionStore


@dataclass
class Stores:
    event_log: EventLog
    sessions: SessionStore
    idempotency: IdempotencyStore
    presence: PresenceRegistry
    pending: PendingDeliveries
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
        await self.event_log.close()
        if self.redis is not None:
            await self.redis.aclose()


def redis_client(url: str) -> aioredis.Redis:
    """A client for ``url``; short timeouts so a Redis outage is noticed, not waited out."""
    options = dict(socket_connect_timeout=2, socket_keepalive=True, health_check_interval=10,
                   retry_on_timeout=False)
    return aioredis.from_url(url, **options)


def memory_stores(config: Config) -> Stores:
    return Stores(
        event_log=MemoryEventLog(config.delivery.log_max_length, config.delivery.log_max_age),
        sessions=MemorySessionStore(),
        idempotency=MemoryIdempotencyStore(),
        presence=MemoryPresenceRegistry(),
        pending=MemoryPendingDeliveries(),
    )


def redis_stores(config: Config) -> Stores:
    url, prefix = config.redis.url, config.redis.key_prefix
    client = redis_client(url)
    # XREAD BLOCK holds its connection, so the follower gets a client of its own; its socket
    # timeout must outlast the block time.
    blocking = aioredis.from_url(url, socket_connect_timeout=2, socket_timeout=10, socket_keepalive=True)
    return Stores(
        event_log=RedisEventLog(client, blocking, prefix, config.delivery.log_max_length,
                                config.delivery.log_max_age),
        sessions=RedisSessionStore(client, prefix),
        idempotency=RedisIdempotencyStore(client, prefix),
        presence=RedisPresenceRegistry(client, prefix),
        pending=RedisPendingDeliveries(client, prefix),
        redis=client,
    )


def build_stores(config: Config) -> Stores:
    return redis_stores(config) if config.redis.url else memory_stores(config)
