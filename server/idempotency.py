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
from functools import partial
from typing import Any, Callable, Protocol

import msgpack
import redis.asyncio as aioredis

from realtime_channels.redis_batch import Commands, DirectCommands, ShardedBatcher, batcher_for

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


# The claims of one loop turn as one call: each key claimed as _CLAIM does (GET, else SET
# PENDING with its own TTL, ARGV[i + 1]), atomically per key (the whole script is atomic).
# pcall: a key's error (WRONGTYPE) is that key's entry of the reply, not the others' failure;
# false is a nil entry (claimed now).
_CLAIM_MANY = """
local out = {}
for i, key in ipairs(KEYS) do
  local stored = redis.pcall('GET', key)
  if stored then
    out[i] = stored
  else
    local set = redis.pcall('SET', key, ARGV[1], 'PX', ARGV[i + 1])
    if set.err then out[i] = set else out[i] = false end
  end
end
return out
"""

# The completions of one loop turn as one call: SET key ack PX ttl per key (ARGV pairs).
_COMPLETE_MANY = """
local out = {}
for i, key in ipairs(KEYS) do
  local set = redis.pcall('SET', key, ARGV[2 * i - 1], 'PX', ARGV[2 * i])
  if set.err then out[i] = set else out[i] = 1 end
end
return out
"""


class _PerTurn:
    """The calls of one kind (claims, or completions) made during one event-loop turn, sent as
    one script call per Redis instance: one request and one array reply instead of one each
    per event.

    :param send: the batcher the script calls go through (it batches them with the turn's
        other commands and reloads the script after ``NOSCRIPT``).
    :param script: the registered many-keys script; its reply has one entry per key.
    :param head: arguments before the per-key ones (the same for every key).
    :param route: the instance index of a key (ShardedRedis), or None for one instance.
    :param max_keys: keys in one script call at most (longer turns make several calls).
    """

    __slots__ = ("send", "script", "head", "route", "max_keys", "items", "loop")

    def __init__(self, send: Commands, script: Any, head: tuple[Any, ...],
                 route: Callable[[str], int] | None, max_keys: int) -> None:
        self.send = send
        self.script = script
        self.head = head
        self.route = route
        self.max_keys = max(1, max_keys)
        self.items: list[tuple[str, tuple[Any, ...], asyncio.Future]] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def add(self, key: str, args: tuple[Any, ...]) -> asyncio.Future:
        """Queue ``key`` with its own ``args``; the future gets its entry of the reply."""
        items = self.items
        if items is None:
            loop = self.loop = asyncio.get_running_loop()
            items = self.items = []
            # Next turn, after everything this turn still does (call_soon order).
            loop.call_soon(self._flush, items)
        future = self.loop.create_future()  # type: ignore[union-attr]
        items.append((key, args, future))
        return future

    def _flush(self, items: list[tuple[str, tuple[Any, ...], asyncio.Future]]) -> None:
        if self.items is items:
            self.items = None
        groups: dict[int, list[tuple[str, tuple[Any, ...], asyncio.Future]]] = {}
        route = self.route
        for item in items:
            if not item[2].done():  # a caller cancelled before the send is left out
                groups.setdefault(route(item[0]) if route is not None else 0, []).append(item)
        for group in groups.values():
            for start in range(0, len(group), self.max_keys):
                chunk = group[start:start + self.max_keys]
                args = list(self.head)
                for item in chunk:
                    args.extend(item[1])
                try:
                    sent = self.send.script(self.script, [item[0] for item in chunk], args)
                except Exception as exc:  # not sent at all (no running loop, ...)
                    _settle(chunk, exc)
                    continue
                asyncio.ensure_future(sent).add_done_callback(partial(_distribute, chunk))


def _settle(chunk: list[tuple[str, tuple[Any, ...], asyncio.Future]], exc: BaseException) -> None:
    for _key, _args, future in chunk:
        if not future.done():
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(exc)


def _distribute(chunk: list[tuple[str, tuple[Any, ...], asyncio.Future]], sent: asyncio.Future) -> None:
    """Each caller gets its own entry of the array reply; a failed call fails its whole chunk
    (a connection error: possibly applied, possibly not, as for a call sent alone)."""
    if sent.cancelled():
        _settle(chunk, asyncio.CancelledError())
        return
    exc = sent.exception()
    if exc is not None:
        _settle(chunk, exc)
        return
    for (_key, _args, future), entry in zip(chunk, sent.result()):
        if future.done():
            continue  # its caller was cancelled after the send: its entry is dropped
        if isinstance(entry, Exception):
            future.set_exception(entry)
        else:
            future.set_result(entry)


class RedisIdempotencyStore:
    """Shared store: one key per event ID, with a TTL.

    Claims, acks and releases go through a :func:`~realtime_channels.redis_batch.batcher_for` batcher:
    those of all events handled in one event-loop turn reach Redis as one pipeline (a command
    sent alone costs ~240 µs of redis-py CPU, several times what the event itself costs).
    Within it, a turn's claims are one script call per instance and its acks another
    (:class:`_PerTurn`); on a Redis Cluster each key keeps its own call.

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
        # Per turn, one claim call and one completion call per instance (keys of one instance
        # only); a cluster keeps one call per key (keys of different slots; DirectCommands).
        self._claims: _PerTurn | None = None
        self._completions: _PerTurn | None = None
        if not isinstance(self._send, DirectCommands):
            route = client.shard_index if isinstance(self._send, ShardedBatcher) else None
            self._claims = _PerTurn(self._send, client.register_script(_CLAIM_MANY), (PENDING,),
                                    route, max_batch)
            self._completions = _PerTurn(self._send, client.register_script(_COMPLETE_MANY), (),
                                         route, max_batch)

    sync = False  # every call is a round trip: awaited
    def _key(self, key: str) -> str:
        return f"{self.prefix}:dedupe:{key}"  # one key per operation: any cluster slot will do

    async def claim(self, key: str, ttl: float) -> tuple[bool, Any]:
        # One script: SET NX then GET could see the entry expire in between and report a
        # claim it never made (two copies then both ran).
        ttl_ms = max(1, int(ttl * 1000))
        if self._claims is not None:
            raw = await self._claims.add(self._key(key), (ttl_ms,))
        else:
            raw = await self._send.script(self._claim, (self._key(key),), (PENDING, ttl_ms))
        return (True, None) if raw is None else (False, _unpack(raw))

    async def complete(self, key: str, ack: Any, ttl: float) -> None:
        # Awaited: the ack is stored (its reply read) before the caller sends the ack.
        packed, ttl_ms = _pack(ack, self.max_reply_bytes), max(1, int(ttl * 1000))
        if self._completions is not None:
            await self._completions.add(self._key(key), (packed, ttl_ms))
        else:
            await self._send.command("SET", self._key(key), packed, "PX", ttl_ms)

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
