"""LoginThrottle: failed operator logins counted per key (a client address, a username).

An attempt is counted *before* its password is checked and given back when it succeeds, so
guesses sent all at once cannot slip past the count while earlier ones are still being hashed.
A key's count lives ``lockout`` seconds from its first failure; the failure that reaches
``attempts`` locks the key for ``lockout`` seconds from then. Attempts refused during a lockout
are not counted: they cannot prolong it.

With Redis the counts are shared by every node (an attacker gains nothing by spreading guesses
over nodes); without, each node counts its own.
"""

from __future__ import annotations

import itertools
import time
from typing import Protocol

import redis.asyncio as aioredis

# Address keys kept in memory at most (addresses seen failing within one lockout); the oldest
# go first. Username keys (one per configured operator) are never dropped to make room: a
# flood of failures from many addresses must not lift a username's lockout.
MAX_MEMORY_KEYS = 100_000


class LoginThrottle(Protocol):
    async def reserve(self, keys: list[str]) -> int | None:
        """Count an attempt against every key (a key named twice once) and return the highest
        count now (0 for no keys); None (and nothing counted) when a key is locked."""

    async def release(self, keys: list[str]) -> None:
        """Give back an attempt :meth:`reserve` counted: it succeeded."""


class MemoryLoginThrottle:
    """:param attempts: failures that lock a key. :param lockout: seconds (see module docstring)."""

    def __init__(self, attempts: int, lockout: float) -> None:
        self.attempts = attempts
        self.lockout = lockout
        self._counts: dict[str, tuple[int, float]] = {}  # key -> (failures, expires at)
        self._next_sweep = 0.0

    def _count(self, key: str, now: float) -> int:
        item = self._counts.get(key)
        if item is None:
            return 0
        if item[1] <= now:
            del self._counts[key]
            return 0
        return item[0]

    async def reserve(self, keys: list[str]) -> int | None:
        keys = list(dict.fromkeys(keys))  # a key named twice is counted once
        if not keys:
            return 0
        now = time.monotonic()
        counts = [self._count(key, now) for key in keys]
        if any(count >= self.attempts for count in counts):
            return None
        for key, count in zip(keys, counts):
            count += 1
            expires = now + self.lockout if count == 1 or count >= self.attempts else self._counts[key][1]
            self._counts.pop(key, None)  # re-inserted last: the dict stays in expiry order, roughly
            self._counts[key] = (count, expires)
        if now >= self._next_sweep:
            # At most once a second, so expired counts do not stay until the cap pushes them out.
            self._next_sweep = now + 1.0
            for key in [k for k, (_, expires) in self._counts.items() if expires <= now]:
                del self._counts[key]
        excess = len(self._counts) - MAX_MEMORY_KEYS
        if excess > 0:
            for key in list(itertools.islice((k for k in self._counts if k.startswith("addr:")), excess)):
                del self._counts[key]
        return max(counts) + 1

    async def release(self, keys: list[str]) -> None:
        for key in dict.fromkeys(keys):
            item = self._counts.get(key)
            if item is not None:
                if item[0] <= 1:
                    del self._counts[key]
                else:
                    self._counts[key] = (item[0] - 1, item[1])


# KEYS: the counters. ARGV: attempts, lockout in ms. Returns the highest count, or -1 if locked.
_RESERVE = """
local limit = tonumber(ARGV[1])
for _, key in ipairs(KEYS) do
  if tonumber(redis.call('GET', key) or '0') >= limit then return -1 end
end
local highest = 0
for _, key in ipairs(KEYS) do
  local n = redis.call('INCR', key)
  if n == 1 or n >= limit then redis.call('PEXPIRE', key, ARGV[2]) end
  if n > highest then highest = n end
end
return highest
"""

_RELEASE = """
for _, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 and redis.call('DECR', key) <= 0 then redis.call('DEL', key) end
end
return 0
"""


class RedisLoginThrottle:
    """The same, in Redis (one script call per attempt, atomic across nodes)."""

    def __init__(self, client: aioredis.Redis, prefix: str, attempts: int, lockout: float) -> None:
        self.client = client
        self.prefix = prefix
        self.attempts = attempts
        self.lockout_ms = max(1, int(lockout * 1000))
        self._reserve = client.register_script(_RESERVE)
        self._release = client.register_script(_RELEASE)

    def _keys(self, keys: list[str]) -> list[str]:
        # One hash tag for every counter: a script counts an address and a username together,
        # so they must share a cluster slot (logins are rare: one slot carries them easily).
        return [f"{self.prefix}:{{admin-login}}:{key}" for key in dict.fromkeys(keys)]

    async def reserve(self, keys: list[str]) -> int | None:
        if not keys:
            return 0
        highest = int(await self._reserve(keys=self._keys(keys), args=[self.attempts, self.lockout_ms]))
        return None if highest < 0 else highest

    async def release(self, keys: list[str]) -> None:
        if keys:
            await self._release(keys=self._keys(keys))
