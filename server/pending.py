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
        """Messages not yet acknowledged and younger than ``ttl``, oldest first (equal
        ``created`` by ``id``)."""

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


def _order(m: PendingMessage) -> tuple[float, str]:
    """Oldest first; messages created at the same instant by id (a hash has no order of its own)."""
    return m.created, m.id


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
        return sorted(self._expire(user, time.time() - ttl).values(), key=_order)

    async def sweep(self, ttl: float) -> None:
        cutoff = time.time() - ttl
        for user in list(self._users):
            self._expire(user, cutoff)


# Redis, per user, two keys sharing the user's hash tag (one cluster slot), both expiring ttl
# after the user's last message:
#   <prefix>:pending:{<user>}:msgs   hash        id -> message
#   <prefix>:pending:{<user>}:at     sorted set  id -> created
# Each script keeps the two consistent in one step and returns the user's oldest `created`
# (false when none is left). <prefix>:pending-due (user -> that oldest `created`) tells the
# sweep whom to visit; it lives in another slot, so it is kept by separate commands after each
# script (see _note_due): never atomically, but never losing a user with messages.

_TRIM = """
local function trim(cutoff)
  local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. cutoff)
  for _, id in ipairs(stale) do redis.call('HDEL', KEYS[1], id) end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. cutoff)
end
local function oldest()
  local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  if #first == 0 then redis.call('DEL', KEYS[1]) return false end
  return first[2]
end
"""

# KEYS: messages, times. ARGV: cutoff (older is expired), ids to forget...
# Returns {how many of the ids were there, oldest created or false}.
_FORGET = _TRIM + """
local removed = 0
for i = 2, #ARGV do
  removed = removed + redis.call('HDEL', KEYS[1], ARGV[i])
  redis.call('ZREM', KEYS[2], ARGV[i])
end
trim(ARGV[1])
return {removed, oldest()}
"""

# KEYS: messages, times. ARGV: cutoff, id, message, created, ttl in ms, max per user.
# Returns {1 when added or 0 when max per user messages already wait, oldest created or false}.
_ADD = _TRIM + """
trim(ARGV[1])
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[6]) and not redis.call('ZSCORE', KEYS[2], ARGV[2]) then
  return {0, oldest()}
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return {1, oldest()}
"""


class RedisPendingDeliveries:
    """Shared store (see the layout above).

    :param max_per_user: messages that may wait for one user.
    """

    def __init__(self, client: aioredis.Redis, prefix: str = "rt", max_per_user: int = 1000) -> None:
        self.client = client
        self.prefix = prefix
        self.max_per_user = max_per_user
        self.due = f"{prefix}:pending-due"
        self._add = client.register_script(_ADD)
        self._forget = client.register_script(_FORGET)

    def _keys(self, user: str) -> list[str]:
        base = f"{self.prefix}:pending:{{{user}}}"
        return [base + ":msgs", base + ":at"]

    async def _note_due(self, user: str, oldest: bytes | None) -> None:
        """Record ``user``'s oldest message in the sweep's index, or unlist the user.

        Unlisting looks again afterwards: a message added between the script and the ZREM
        lists its user again here, and one added after this look lists the user itself."""
        if oldest:
            await self.client.zadd(self.due, {user: float(oldest)})
            return
        await self.client.zrem(self.due, user)
        first = await self.client.zrange(self._keys(user)[1], 0, 0, withscores=True)
        if first:
            await self.client.zadd(self.due, {user: first[0][1]})

    async def add(self, user: str, message: PendingMessage, ttl: float) -> bool:
        args = [repr(time.time() - ttl), message.id, _encode(message), repr(message.created),
                max(1, int(ttl * 1000)), self.max_per_user]
        added, oldest = await self._add(keys=self._keys(user), args=args)
        if added:
            await self._note_due(user, oldest)
        return bool(added)

    async def ack(self, user: str, ids: list[str]) -> int:
        if not ids:
            return 0
        removed, oldest = await self._forget(keys=self._keys(user), args=["-inf", *ids])
        if removed:
            await self._note_due(user, oldest)
        return int(removed)

    async def pending(self, user: str, ttl: float) -> list[PendingMessage]:
        raw = await self.client.hgetall(self._keys(user)[0])
        cutoff = time.time() - ttl
        out, stale = [], []
        for field, value in raw.items():
            m = _decode(value)
            if m is None or m.created < cutoff:
                stale.append(field)  # expired, or not ours to trust
            else:
                out.append(m)
        if stale:
            _, oldest = await self._forget(keys=self._keys(user), args=[repr(cutoff), *stale])
            await self._note_due(user, oldest)
        return sorted(out, key=_order)

    async def sweep(self, ttl: float) -> None:
        """Runs on a timer: one script per user whose oldest message is past ``ttl``."""
        cutoff = time.time() - ttl
        while True:
            # Each visit moves the user's score past the cutoff or removes it: this ends.
            users = await self.client.zrangebyscore(self.due, "-inf", f"({cutoff!r}", start=0, num=500)
            for raw in users:
                user = raw.decode() if isinstance(raw, bytes) else raw
                _, oldest = await self._forget(keys=self._keys(user), args=[repr(cutoff)])
                await self._note_due(user, oldest)
            if len(users) < 500:
                return
