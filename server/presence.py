"""PresenceRegistry: who is in a room, across nodes, correct when a node dies.

Entries are per connection (``sid``) and carry the user they belong to. Each entry has an
expiry that its node refreshes by heartbeat. The contract both implementations keep:

- an entry is *live* while its expiry is in the future; a lapsed entry (its node stopped
  refreshing it) counts as absent everywhere: in :meth:`members`, and when :meth:`join` and
  :meth:`leave` decide whether a user arrives or goes;
- a user is present while one of its entries in the room is live; its name is the one its most
  recent :meth:`join` gave;
- each departure is reported once: by :meth:`leave` when it removes the user's last live entry
  (the user's lapsed entries in the room go with it), or by :meth:`expire` when the user's
  entries have all lapsed;
- :meth:`refresh` extends entries that are still stored, lapsed or not.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis


@dataclass(frozen=True)
class Member:
    user: str
    name: str


class PresenceRegistry(Protocol):
    async def join(self, namespace: str, room: str, sid: str, member: Member, ttl: float) -> bool:
        """Add a connection for ``ttl`` seconds; True when the user had no live entry in the room."""

    async def leave(self, namespace: str, room: str, sid: str) -> Member | None:
        """Remove a connection; the member when the user has no live entry in the room left."""

    async def members(self, namespace: str, room: str) -> list[Member]:
        """The distinct users with a live entry, sorted by user id."""

    async def refresh(self, namespace: str, entries: list[tuple[str, str]], ttl: float) -> None:
        """Extend the expiry of this node's (room, sid) entries to ``ttl`` seconds from now."""

    async def expire(self, namespace: str) -> list[tuple[str, Member]]:
        """Drop lapsed entries; the (room, member) pairs whose user has thereby left, sorted."""


class MemoryPresenceRegistry:
    def __init__(self) -> None:
        # (namespace, room) -> sid -> (expires_at, user); (namespace, room) -> user -> name
        self._rooms: dict[tuple[str, str], dict[str, tuple[float, str]]] = {}
        self._names: dict[tuple[str, str], dict[str, str]] = {}

    def size(self) -> int:
        """Entries held, all rooms together."""
        return sum(len(entries) for entries in self._rooms.values())

    async def join(self, namespace: str, room: str, sid: str, member: Member, ttl: float) -> bool:
        now = time.time()
        entries = self._rooms.setdefault((namespace, room), {})
        first = not any(user == member.user and exp > now for exp, user in entries.values())
        entries[sid] = (now + ttl, member.user)
        self._names.setdefault((namespace, room), {})[member.user] = member.name
        return first

    def _settle(self, key: tuple[str, str], user: str, now: float) -> Member | None:
        """Drop ``user``'s lapsed entries in the room; the member when none of its entries is left."""
        entries = self._rooms.get(key, {})
        for sid in [s for s, (exp, u) in entries.items() if u == user and exp <= now]:
            del entries[sid]
        if any(u == user for _, u in entries.values()):
            return None
        names = self._names.get(key, {})
        member = Member(user, names.pop(user, user))
        if not entries:
            self._rooms.pop(key, None)
            self._names.pop(key, None)
        return member

    async def leave(self, namespace: str, room: str, sid: str) -> Member | None:
        key = (namespace, room)
        item = self._rooms.get(key, {}).pop(sid, None)
        if item is None:
            return None
        return self._settle(key, item[1], time.time())

    async def members(self, namespace: str, room: str) -> list[Member]:
        now = time.time()
        users = {u for exp, u in self._rooms.get((namespace, room), {}).values() if exp > now}
        names = self._names.get((namespace, room), {})
        return [Member(u, names.get(u, u)) for u in sorted(users)]

    async def refresh(self, namespace: str, entries: list[tuple[str, str]], ttl: float) -> None:
        expires = time.time() + ttl
        for room, sid in entries:
            stored = self._rooms.get((namespace, room), {})
            if sid in stored:
                stored[sid] = (expires, stored[sid][1])

    async def expire(self, namespace: str) -> list[tuple[str, Member]]:
        now = time.time()
        gone = []
        for key in [k for k in self._rooms if k[0] == namespace]:
            lapsed = {u for exp, u in self._rooms[key].values() if exp <= now}
            for user in sorted(lapsed):
                member = self._settle(key, user, now)
                if member is not None:
                    gone.append((key[1], member))
        return sorted(gone, key=lambda g: (g[0], g[1].user))


# Redis, per room, three keys sharing the room's hash tag (one cluster slot):
#   <prefix>:presence:{<namespace>#<room>}:exp    sorted set  sid -> expiry (epoch seconds)
#   <prefix>:presence:{<namespace>#<room>}:who    hash        sid -> user
#   <prefix>:presence:{<namespace>#<room>}:names  hash        user -> name of its latest join
# (Redis 7.0 has no per-field hash expiry.) Each operation on a room is one script over its
# three keys. <prefix>:presence-rooms:<namespace> lists the rooms that have entries, for the
# expiry timer; it lives in another slot, so it is kept by separate commands (see expire()).

# Shared by the scripts: drop USER's lapsed entries; if the user has no entry left, forget its
# name and return {user, name}, else false. KEYS as below, NOW the time.
_SETTLE = """
local function settle(user, now)
  local present = false
  local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
  for i = 1, #entries, 2 do
    local sid = entries[i]
    if redis.call('HGET', KEYS[2], sid) == user then
      if tonumber(entries[i + 1]) > now then
        present = true
      else
        redis.call('ZREM', KEYS[1], sid)
        redis.call('HDEL', KEYS[2], sid)
      end
    end
  end
  if present then return false end
  local name = redis.call('HGET', KEYS[3], user) or user
  redis.call('HDEL', KEYS[3], user)
  if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('DEL', KEYS[2], KEYS[3]) end
  return {user, name}
end
"""

# KEYS: exp, who, names. ARGV: sid, user, name, now, expires. Returns 1 when the user had no
# live entry in the room.
_JOIN = """
local now = tonumber(ARGV[4])
local first = 1
for _, sid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[4], '+inf')) do
  if redis.call('HGET', KEYS[2], sid) == ARGV[2] then first = 0 break end
end
redis.call('ZADD', KEYS[1], ARGV[5], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
return first
"""

# KEYS: exp, who, names. ARGV: sid, now. Returns {user, name} when the user has gone, else false.
_LEAVE = _SETTLE + """
local user = redis.call('HGET', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if not user then return false end
return settle(user, tonumber(ARGV[2]))
"""

# KEYS: exp, who, names. ARGV: now. Returns {entries left, user, name, user, name...}.
_EXPIRE = _SETTLE + """
local now = tonumber(ARGV[1])
local users, seen = {}, {}
for _, sid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])) do
  local user = redis.call('HGET', KEYS[2], sid)
  if user and not seen[user] then seen[user] = true table.insert(users, user) end
  if not user then redis.call('ZREM', KEYS[1], sid) end
end
local out = {0}
for _, user in ipairs(users) do
  local gone = settle(user, now)
  if gone then table.insert(out, gone[1]) table.insert(out, gone[2]) end
end
out[1] = redis.call('ZCARD', KEYS[1])
if out[1] == 0 then redis.call('DEL', KEYS[2], KEYS[3]) end
return out
"""


def _text(raw: bytes | str | None) -> str | None:
    """A stored string, or None when absent or not UTF-8 (not ours to trust)."""
    if raw is None or isinstance(raw, str):
        return raw
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None


class RedisPresenceRegistry:
    """Shared registry (see the key layout above)."""

    def __init__(self, client: aioredis.Redis, prefix: str = "rt") -> None:
        self.client = client
        self.prefix = prefix
        self._join = client.register_script(_JOIN)
        self._leave = client.register_script(_LEAVE)
        self._expire = client.register_script(_EXPIRE)

    def _keys(self, namespace: str, room: str) -> list[str]:
        base = f"{self.prefix}:presence:{{{namespace}#{room}}}"
        return [base + ":exp", base + ":who", base + ":names"]

    def _index(self, namespace: str) -> str:
        return f"{self.prefix}:presence-rooms:{namespace}"

    async def join(self, namespace: str, room: str, sid: str, member: Member, ttl: float) -> bool:
        now = time.time()
        first = await self._join(keys=self._keys(namespace, room),
                                 args=[sid, member.user, member.name, repr(now), repr(now + ttl)])
        # After the entry is stored (see expire(): an index entry is never lost to a race).
        await self.client.sadd(self._index(namespace), room)
        return bool(first)

    async def leave(self, namespace: str, room: str, sid: str) -> Member | None:
        gone = await self._leave(keys=self._keys(namespace, room), args=[sid, repr(time.time())])
        if not gone:
            return None
        user, name = _text(gone[0]), _text(gone[1])
        return Member(user, name if name is not None else user) if user is not None else None

    async def members(self, namespace: str, room: str) -> list[Member]:
        exp, who, names = self._keys(namespace, room)
        sids = await self.client.zrangebyscore(exp, f"({time.time()!r}", "+inf")
        if not sids:
            return []
        users = sorted({u for u in map(_text, await self.client.hmget(who, sids)) if u is not None})
        if not users:
            return []
        found = [_text(n) for n in await self.client.hmget(names, users)]
        return [Member(u, n if n is not None else u) for u, n in zip(users, found)]

    async def refresh(self, namespace: str, entries: list[tuple[str, str]], ttl: float) -> None:
        if not entries:
            return
        expires = time.time() + ttl
        # Not a transaction: each ZADD touches one room's slot (a cluster pipeline splits by node).
        async with self.client.pipeline(transaction=False) as pipe:
            for room, sid in entries:
                pipe.zadd(self._keys(namespace, room)[0], {sid: expires}, xx=True)
            await pipe.execute()

    async def expire(self, namespace: str) -> list[tuple[str, Member]]:
        """Runs on a timer: one script per room listed in the namespace's index."""
        now = repr(time.time())
        index = self._index(namespace)
        gone = []
        for raw_room in await self.client.smembers(index):
            room = _text(raw_room)
            if room is None:
                await self.client.srem(index, raw_room)
                continue
            keys = self._keys(namespace, room)
            left, *pairs = await self._expire(keys=keys, args=[now])
            for i in range(0, len(pairs) - 1, 2):
                user, name = _text(pairs[i]), _text(pairs[i + 1])
                if user is not None:
                    gone.append((room, Member(user, name if name is not None else user)))
            if not left:
                # Unlist, then look again: a join that stored its entry meanwhile is listed
                # again here, and a join after this look lists its room itself.
                await self.client.srem(index, room)
                if await self.client.exists(keys[0]):
                    await self.client.sadd(index, room)
        return sorted(gone, key=lambda g: (g[0], g[1].user))
