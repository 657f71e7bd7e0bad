"""PendingDeliveries: server-to-user messages that must be retried until acknowledged.

Held per user in the shared store, so any node that serves one of the user's connections
can retry them, and the set survives the death of the node that first sent them.

Bounds: at most ``max_per_user`` messages wait for one user (``add`` refuses more), and a
message is dropped once older than ``ttl``, whether or not its user is ever online: by
:meth:`~PendingDeliveries.sweep` on a timer, and whenever the user's messages are read or
added to.
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
    async def add(self, user: str, message: PendingMessage, ttl: float) -> bool:
        """Keep ``message`` for ``user`` for ``ttl`` seconds from its ``created``; False (and
        nothing kept) when ``max_per_user`` messages already wait for the user."""

    async def ack(self, user: str, ids: list[str]) -> int:
        """Forget acknowledged messages; returns how many were pending."""

    async def pending(self, user: str, ttl: float) -> list[PendingMessage]:
        """Messages not yet acknowledged and younger than ``ttl``, oldest first."""

    async def sweep(self, ttl: float) -> None:
        """Drop every user's messages older than ``ttl`` (the periodic sweep)."""


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
    """In-process store.

    :param max_per_user: messages that may wait for one user.
    """

    def __init__(self, max_per_user: int = 1000) -> None:
        self.max_per_user = max_per_user
        self._users: dict[str, dict[str, PendingMessage]] = {}

    def size(self) -> int:
        """Messages held, all users together."""
        return sum(len(box) for box in self._users.values())

    def _expire(self, user: str, cutoff: float) -> dict[str, PendingMessage]:
        box = self._users.get(user, {})
        for mid in [i for i, m in box.items() if m.created < cutoff]:
            del box[mid]
        if not box:
            self._users.pop(user, None)
        return box

    async def add(self, user: str, message: PendingMessage, ttl: float) -> bool:
        box = self._expire(user, time.time() - ttl)
        if len(box) >= self.max_per_user and message.id not in box:
            return False
        self._users[user] = box
        box[message.id] = message
        return True

    async def ack(self, user: str, ids: list[str]) -> int:
        box = self._users.get(user, {})
        n = sum(1 for i in ids if box.pop(i, None) is not None)
        if not box:
            self._users.pop(user, None)
        return n

    async def pending(self, user: str, ttl: float) -> list[PendingMessage]:
        return sorted(self._expire(user, time.time() - ttl).values(), key=lambda m: m.created)

    async def sweep(self, ttl: float) -> None:
        cutoff = time.time() - ttl
        for user in list(self._users):
            self._expire(user, cutoff)


# Redis: per user a hash <prefix>:pending:<user> (id -> message) and a sorted set
# <prefix>:pending-at:<user> (id -> created), both expiring ttl after the user's last message;
# <prefix>:pending-due (user -> created of the user's oldest message) tells the sweep whom to visit.
# Each script keeps the three consistent in one step.

# KEYS: messages, times, due. ARGV: user, cutoff (older is expired), ids to forget...
# Returns how many of the ids were there.
_FORGET = """
local removed = 0
for i = 3, #ARGV do
  removed = removed + redis.call('HDEL', KEYS[1], ARGV[i])
  redis.call('ZREM', KEYS[2], ARGV[i])
end
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[2])
for _, id in ipairs(stale) do redis.call('HDEL', KEYS[1], id) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[2])
local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if #oldest == 0 then redis.call('ZREM', KEYS[3], ARGV[1]) else redis.call('ZADD', KEYS[3], oldest[2], ARGV[1]) end
return removed
"""

# KEYS: messages, times, due. ARGV: user, cutoff, id, message, created, ttl in ms, max per user.
# Returns 1 when added, 0 when the user already has max per user messages waiting.
_ADD = """
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[2])
for _, id in ipairs(stale) do redis.call('HDEL', KEYS[1], id) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[2])
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[7]) and not redis.call('ZSCORE', KEYS[2], ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
redis.call('ZADD', KEYS[3], oldest[2], ARGV[1])
return 1
"""


class RedisPendingDeliveries:
    """Shared store (see the layout above).

    :param max_per_user: messages that may wait for one user.
    """

    def __init__(self, client: aioredis.Redis, prefix: str = "rt", max_per_user: int = 1000) -> None:
        self.client = client
        self.prefix = prefix
        self.max_per_user = max_per_user
        self._add = client.register_script(_ADD)
        self._forget = client.register_script(_FORGET)

    def _keys(self, user: str) -> list[str]:
        return [f"{self.prefix}:pending:{user}", f"{self.prefix}:pending-at:{user}", f"{self.prefix}:pending-due"]

    async def add(self, user: str, message: PendingMessage, ttl: float) -> bool:
        args = [user, repr(time.time() - ttl), message.id, _encode(message), repr(message.created),
                max(1, int(ttl * 1000)), self.max_per_user]
        return bool(await self._add(keys=self._keys(user), args=args))

    async def ack(self, user: str, ids: list[str]) -> int:
        if not ids:
            return 0
        return int(await self._forget(keys=self._keys(user), args=[user, "-inf", *ids]))

    async def pending(self, user: str, ttl: float) -> list[PendingMessage]:
        raw = await self.client.hgetall(self._keys(user)[0])
        cutoff = time.time() - ttl
        out, stale = [], []
        for field, value in raw.items():
            m = _decode(value)
            if m is None or m.created < cutoff:
                stale.append(field)
            else:
                out.append(m)
        if stale:
            await self._forget(keys=self._keys(user), args=[user, repr(cutoff), *stale])
        return sorted(out, key=lambda m: m.created)

    async def sweep(self, ttl: float) -> None:
        cutoff = time.time() - ttl
        due = self._keys("")[2]
        while True:
            # Each visit moves the user's score past the cutoff or removes it: this ends.
            users = await self.client.zrangebyscore(due, "-inf", f"({cutoff!r}", start=0, num=500)
            for user in users:
                user = user.decode() if isinstance(user, bytes) else user
                await self._forget(keys=self._keys(user), args=[user, repr(cutoff)])
            if len(users) < 500:
                return
