"""PendingDeliveries: server-to-user messages that must be retried until acknowledged.

Held per user in the shared store, so any node that serves one of the user's connections
can retry them, and the set survives the death of the node that first sent them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack
import redis.asyncio as aioredis


@dataclass
class PendingMessage:
    id: str
    event: str
    payload: Any
    created: float


class PendingDeliveries(Protocol):
    async def add(self, user: str, message: PendingMessage, ttl: float) -> None: ...

    async def ack(self, user: str, ids: list[str]) -> int:
        """Forget acknowledged messages; returns how many were pending."""

    async def pending(self, user: str, ttl: float) -> list[PendingMessage]:
        """Messages not yet acknowledged and younger than ``ttl``, oldest first."""


def _encode(m: PendingMessage) -> bytes:
    return msgpack.packb([m.id, m.event, m.payload, m.created])


def _decode(raw: bytes) -> PendingMessage | None:
    try:
        v = msgpack.unpackb(raw)
    except Exception:
        return None
    if (isinstance(v, list) and len(v) == 4 and isinstance(v[0], str) and isinstance(v[1], str)
            and isinstance(v[3], (int, float))):
        return PendingMessage(v[0], v[1], v[2], float(v[3]))
    return None


class MemoryPendingDeliveries:
    def __init__(self) -> None:
        self._users: dict[str, dict[str, PendingMessage]] = {}

    async def add(self, user: str, message: PendingMessage, ttl: float) -> None:
        self._users.setdefault(user, {})[message.id] = message

    async def ack(self, user: str, ids: list[str]) -> int:
        box = self._users.get(user, {})
        n = sum(1 for i in ids if box.pop(i, None) is not None)
        if not box:
            self._users.pop(user, None)
        return n

    async def pending(self, user: str, ttl: float) -> list[PendingMessage]:
        box = self._users.get(user, {})
        cutoff = time.time() - ttl
        for mid in [i for i, m in box.items() if m.created < cutoff]:
            del box[mid]
        return sorted(box.values(), key=lambda m: m.created)


class RedisPendingDeliveries:
    def __init__(self, client: aioredis.Redis, prefix: str = "rt") -> None:
        self.client = client
        self.prefix = prefix

    def _key(self, user: str) -> str:
        return f"{self.prefix}:pending:{user}"

    async def add(self, user: str, message: PendingMessage, ttl: float) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(self._key(user), message.id, _encode(message))
            pipe.expire(self._key(user), max(1, int(ttl)))
            await pipe.execute()

    async def ack(self, user: str, ids: list[str]) -> int:
        return int(await self.client.hdel(self._key(user), *ids)) if ids else 0

    async def pending(self, user: str, ttl: float) -> list[PendingMessage]:
        raw = await self.client.hgetall(self._key(user))
        cutoff = time.time() - ttl
        out, stale = [], []
        for field, value in raw.items():
            m = _decode(value)
            if m is None or m.created < cutoff:
                stale.append(field)
            else:
                out.append(m)
        if stale:
            await self.client.hdel(self._key(user), *stale)
        return sorted(out, key=lambda m: m.created)
