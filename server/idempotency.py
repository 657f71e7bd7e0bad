"""IdempotencyStore: client event IDs and the ack each produced, for effectively-once handling.

A client may put an ``_id`` on any event. The first arrival claims the ID; when its handler
returns, the ack is stored under the ID for ``ttl`` seconds. A retry of the same ID is not
applied again and gets the stored ack (or waits briefly while the first is still running).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

import msgpack
import redis.asyncio as aioredis

PENDING = b"\x00pending"


class IdempotencyStore(Protocol):
    async def claim(self, key: str, ttl: float) -> tuple[bool, Any]:
        """(True, None) if ``key`` is new and now claimed; else (False, stored ack or PENDING)."""

    async def complete(self, key: str, ack: Any, ttl: float) -> None:
        """Record the ack for a claimed ``key``."""

    async def release(self, key: str) -> None:
        """Forget a claim whose handler failed, so a retry can run it."""


def _pack(ack: Any) -> bytes:
    return msgpack.packb(ack, default=repr)


def _unpack(raw: bytes) -> Any:
    if raw == PENDING:
        return PENDING
    try:
        return msgpack.unpackb(raw)
    except Exception:
        return None


class MemoryIdempotencyStore:
    def __init__(self) -> None:
        self._items: dict[str, tuple[float, bytes]] = {}
        self._next_sweep = 0.0

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + 1.0
        for key in [k for k, (exp, _) in self._items.items() if exp <= now]:
            del self._items[key]

    async def claim(self, key: str, ttl: float) -> tuple[bool, Any]:
        now = time.monotonic()
        self._sweep(now)
        item = self._items.get(key)
        if item is not None and item[0] > now:
            return False, _unpack(item[1])
        self._items[key] = (now + ttl, PENDING)
        return True, None

    async def complete(self, key: str, ack: Any, ttl: float) -> None:
        self._items[key] = (time.monotonic() + ttl, _pack(ack))

    async def release(self, key: str) -> None:
        self._items.pop(key, None)


class RedisIdempotencyStore:
    def __init__(self, client: aioredis.Redis, prefix: str = "rt") -> None:
        self.client = client
        self.prefix = prefix

    def _key(self, key: str) -> str:
        return f"{self.prefix}:dedupe:{key}"

    async def claim(self, key: str, ttl: float) -> tuple[bool, Any]:
        ms = max(1, int(ttl * 1000))
        if await self.client.set(self._key(key), PENDING, nx=True, px=ms):
            return True, None
        raw = await self.client.get(self._key(key))
        return (True, None) if raw is None else (False, _unpack(raw))

    async def complete(self, key: str, ack: Any, ttl: float) -> None:
        await self.client.set(self._key(key), _pack(ack), px=max(1, int(ttl * 1000)))

    async def release(self, key: str) -> None:
        await self.client.delete(self._key(key))


async def wait_for_ack(store: IdempotencyStore, key: str, ttl: float,
                       bound: float = 5.0) -> tuple[bool, Any]:
    """A duplicate arrived while the first copy is still running: wait (bounded) for its ack.

    Returns ``(True, None)`` when the first copy gave up its claim and this one now owns the ID,
    ``(False, ack)`` when the ack arrived, ``(False, PENDING)`` when the bound ran out.
    """
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        fresh, ack = await store.claim(key, ttl)
        if fresh or ack is not PENDING:
            return fresh, ack
    return False, PENDING
