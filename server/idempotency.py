"""IdempotencyStore: client event IDs and the ack each produced, for effectively-once handling.

A client may put an ``_id`` on any event. The first arrival claims the ID; when its handler
returns, the ack is stored under the ID for ``ttl`` seconds. A retry of the same ID is not
applied again and gets the stored ack (or waits briefly while the first is still running).

Bounds: an ack is kept only up to ``max_reply_bytes`` (packed); a bigger one is stored as
:data:`TOO_LARGE`, and its retry is told the event was applied but its reply cannot be
replayed. Every entry expires after its ``ttl`` (Redis by itself; the memory store by
:meth:`~MemoryIdempotencyStore.sweep`, on a timer), and the memory store holds at most
``max_bytes`` altogether, dropping its oldest entries first.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

import msgpack
import redis.asyncio as aioredis

from realtime_channels.redis_batch import batcher_for

PENDING = b"\x00pending"
# Stored instead of an ack bigger than max_reply_bytes: the retry gets an explicit error.
TOO_LARGE = b"\x00too-large"


class IdempotencyStore(Protocol):
    async def claim(self, key: str, ttl: float) -> tuple[bool, Any]:
        """(True, None) if ``key`` is new and now claimed; else (False, stored ack or PENDING)."""

    async def complete(self, key: str, ack: Any, ttl: float) -> None:
        """Record the ack for a claimed ``key``."""

    async def release(self, key: str) -> None:
        """Forget a claim whose handler failed, so a retry can run it."""

    async def sweep(self) -> None:
        """Drop expired entries (the periodic sweep; a no-op where the store expires them itself)."""


# msgpack.packb(ack, default=repr) makes a Packer per call; this one is reused (it resets
# after each pack, and nothing here packs re-entrantly).
_pack_now = msgpack.Packer(default=repr).pack


def _pack(ack: Any, max_bytes: int) -> bytes:
    packed = _pack_now(ack)
    return packed if len(packed) <= max_bytes else TOO_LARGE


def _unpack(raw: bytes) -> Any:
    if raw == PENDING:
        return PENDING
    if raw == TOO_LARGE:
        return TOO_LARGE
    try:
        return msgpack.unpackb(raw)
    except Exception:
        return None


# What an entry costs besides its key and value: the dict slot, the tuple, the float.
ENTRY_OVERHEAD = 120
_PENDING_WEIGHT = len(PENDING) + ENTRY_OVERHEAD  # a claim's, besides its key


class MemoryIdempotencyStore:
    """In-process store.

    :param max_reply_bytes: largest packed ack kept; bigger ones become :data:`TOO_LARGE`.
    :param max_bytes: what all entries may weigh together (keys, acks and overhead); past it
                      the oldest entries are dropped.
    """

    def __init__(self, max_reply_bytes: int = 16_384, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_reply_bytes = max_reply_bytes
        self.max_bytes = max_bytes
        # Oldest first: an entry is moved to the end whenever it is written.
        self._items: dict[str, tuple[float, bytes]] = {}
        self._bytes = 0
        self._next_sweep = 0.0

    def size(self) -> int:
        """Entries held."""
        return len(self._items)

    def size_bytes(self) -> int:
        """What the entries weigh, as counted against ``max_bytes``."""
        return self._bytes

    def _put(self, key: str, expires: float, value: bytes) -> None:
        items = self._items
        old = items.pop(key, None)
        size = self._bytes + len(key) + len(value) + ENTRY_OVERHEAD
        if old is not None:
            size -= len(key) + len(old[1]) + ENTRY_OVERHEAD
        items[key] = (expires, value)
        self._bytes = size
        if size > self.max_bytes:
            self._shed()

    def _drop(self, key: str) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self._bytes -= len(key) + len(item[1]) + ENTRY_OVERHEAD

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + 1.0
        for key in [k for k, (exp, _) in self._items.items() if exp <= now]:
            self._drop(key)

    async def sweep(self) -> None:
        self._sweep(time.monotonic())

    # The event path calls these two directly (``sync`` says it may): no coroutine per call.
    sync = True

    def claim_now(self, key: str, ttl: float) -> tuple[bool, Any]:
        """:meth:`claim`, without awaiting (this store never waits)."""
        now = time.monotonic()
        if now >= self._next_sweep:
            self._sweep(now)
        items = self._items
        item = items.get(key)
        if item is None:  # the common case: _put for a key not held, inline
            items[key] = (now + ttl, PENDING)
            self._bytes += len(key) + _PENDING_WEIGHT
            if self._bytes > self.max_bytes:
                self._shed()
            return True, None
        if item[0] > now:
            return False, _unpack(item[1])
        self._put(key, now + ttl, PENDING)
        return True, None

    def complete_now(self, key: str, ack: Any, ttl: float) -> None:
        """:meth:`complete`, without awaiting."""
        packed = _pack_now(ack)
        if len(packed) > self.max_reply_bytes:
            packed = TOO_LARGE
        # _put, inline: the claim's entry (if still held) is replaced and moves to the end.
        items = self._items
        old = items.pop(key, None)
        size = self._bytes + len(key) + len(packed) + ENTRY_OVERHEAD
        if old is not None:
            size -= len(key) + len(old[1]) + ENTRY_OVERHEAD
        items[key] = (time.monotonic() + ttl, packed)
        self._bytes = size
        if size > self.max_bytes:
            self._shed()

    def _shed(self) -> None:
        """Drop the oldest entries until the store is within ``max_bytes``."""
        items = self._items
        while self._bytes > self.max_bytes and items:
            self._drop(next(iter(items)))

    async def claim(self, key: str, ttl: float) -> tuple[bool, Any]:
        return self.claim_now(key, ttl)

    async def complete(self, key: str, ack: Any, ttl: float) -> None:
        self.complete_now(key, ack, ttl)

    async def release(self, key: str) -> None:
        self._drop(key)


# KEYS: the entry. ARGV: the pending marker, ttl in ms. Returns nil when now claimed, else the
# stored value.
_CLAIM = """
local stored = redis.call('GET', KEYS[1])
if stored then return stored end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return nil
"""


class RedisIdempotencyStore:
    """Shared store: one key per event ID, with a TTL.

    Claims, acks and releases go through a :func:`~realtime_channels.redis_batch.batcher_for` batcher:
    those of all events handled in one event-loop turn reach Redis as one pipeline (a command
    sent alone costs ~240 µs of redis-py CPU, several times what the event itself costs).

    :param client: the Redis client (:func:`server.stores.redis_client`'s: plain, sentinel,
                   sharded or cluster).
    :param prefix: the first part of every key (``<prefix>:dedupe:<key>``).
    :param max_reply_bytes: largest packed ack kept; bigger ones become :data:`TOO_LARGE`.
    :param max_batch: commands in one pipeline at most.
    """

    def __init__(self, client: aioredis.Redis, prefix: str = "rt", max_reply_bytes: int = 16_384,
                 max_batch: int = 1000) -> None:
        self.client = client
        self.prefix = prefix
        self.max_reply_bytes = max_reply_bytes
        self._claim = client.register_script(_CLAIM)
        self._send = batcher_for(client, max_batch)

    sync = False  # every call is a round trip: awaited
    def _key(self, key: str) -> str:
        return f"{self.prefix}:dedupe:{key}"  # one key per operation: any cluster slot will do

    async def claim(self, key: str, ttl: float) -> tuple[bool, Any]:
        # One script: SET NX then GET could see the entry expire in between and report a
        # claim it never made (two copies then both ran).
        raw = await self._send.script(self._claim, (self._key(key),), (PENDING, max(1, int(ttl * 1000))))
        return (True, None) if raw is None else (False, _unpack(raw))

    async def complete(self, key: str, ack: Any, ttl: float) -> None:
        # Awaited: the ack is stored (its reply read) before the caller sends the ack.
        await self._send.command("SET", self._key(key), _pack(ack, self.max_reply_bytes),
                                 "PX", max(1, int(ttl * 1000)))

    async def release(self, key: str) -> None:
        await self._send.command("DEL", self._key(key))

    async def sweep(self) -> None:
        return None  # every key has its TTL


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
