"""PresenceRegistry: who is in a room, across nodes, correct when a node dies.

Entries are per connection (``sid``) and carry the user they belong to. Each entry has an
expiry that its node refreshes by heartbeat; a dead node's entries lapse on their own and
:meth:`expire` reports the users who thereby left.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import msgpack
import redis.asyncio as aioredis


@dataclass(frozen=True)
class Member:
    user: str
    name: str


class PresenceRegistry(Protocol):
    async def join(self, namespace: str, room: str, sid: str, member: Member, ttl: float) -> bool:
        """Add a connection; True when it is the user's first connection in the room."""

    async def leave(self, namespace: str, room: str, sid: str) -> Member | None:
        """Remove a connection; the member when it was the user's last one in the room."""

    async def members(self, namespace: str, room: str) -> list[Member]:
        """The distinct users present, sorted by user id."""

    async def refresh(self, namespace: str, entries: list[tuple[str, str]], ttl: float) -> None:
        """Extend the expiry of this node's (room, sid) entries."""

    async def expire(self, namespace: str) -> list[tuple[str, Member]]:
        """Drop lapsed entries; the (room, member) pairs whose user has thereby left."""


class MemoryPresenceRegistry:
    def __init__(self) -> None:
        # (namespace, room) -> sid -> (expires_at, member)
        self._rooms: dict[tuple[str, str], dict[str, tuple[float, Member]]] = {}

    async def join(self, namespace: str, room: str, sid: str, member: Member, ttl: float) -> bool:
        entries = self._rooms.setdefault((namespace, room), {})
        first = all(m.user != member.user for _, m in entries.values())
        entries[sid] = (time.time() + ttl, member)
        return first

    async def leave(self, namespace: str, room: str, sid: str) -> Member | None:
        entries = self._rooms.get((namespace, room), {})
        item = entries.pop(sid, None)
        if not entries:
            self._rooms.pop((namespace, room), None)
        if item is None:
            return None
        member = item[1]
        return None if any(m.user == member.user for _, m in entries.values()) else member

    async def members(self, namespace: str, room: str) -> list[Member]:
        now = time.time()
        entries = self._rooms.get((namespace, room), {})
        unique = {m.user: m for exp, m in entries.values() if exp > now}
        return [unique[u] for u in sorted(unique)]

    async def refresh(self, namespace: str, entries: list[tuple[str, str]], ttl: float) -> None:
        expires = time.time() + ttl
        for room, sid in entries:
            item = self._rooms.get((namespace, room), {}).get(sid)
            if item is not None:
                self._rooms[(namespace, room)][sid] = (expires, item[1])

    async def expire(self, namespace: str) -> list[tuple[str, Member]]:
        now = time.time()
        gone = []
        for (ns, room), entries in list(self._rooms.items()):
            if ns != namespace:
                continue
            for sid in [s for s, (exp, _) in entries.items() if exp <= now]:
                member = await self.leave(ns, room, sid)
                if member is not None:
                    gone.append((room, member))
        return gone


class RedisPresenceRegistry:
    """Per room: a sorted set ``sid -> expiry`` and a hash ``sid -> member`` (Redis 7.0 has no
    per-field hash expiry). An index set lists the rooms of a namespace for :meth:`expire`."""

    def __init__(self, client: aioredis.Redis, prefix: str = "rt") -> None:
        self.client = client
        self.prefix = prefix

    def _keys(self, namespace: str, room: str) -> tuple[str, str]:
        base = f"{self.prefix}:presence:{namespace}:{room}"
        return base + ":exp", base + ":who"

    def _index(self, namespace: str) -> str:
        return f"{self.prefix}:presence-rooms:{namespace}"

    @staticmethod
    def _member(raw: bytes | None) -> Member | None:
        try:
            value = msgpack.unpackb(raw) if raw else None
        except Exception:
            return None
        if isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value):
            return Member(value[0], value[1])
        return None

    async def _users(self, namespace: str, room: str, now: float) -> dict[str, Member]:
        exp, who = self._keys(namespace, room)
        sids = await self.client.zrangebyscore(exp, now, "+inf")
        if not sids:
            return {}
        members = [self._member(raw) for raw in await self.client.hmget(who, sids)]
        return {m.user: m for m in members if m is not None}

    async def join(self, namespace: str, room: str, sid: str, member: Member, ttl: float) -> bool:
        now = time.time()
        before = await self._users(namespace, room, now)
        exp, who = self._keys(namespace, room)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.zadd(exp, {sid: now + ttl})
            pipe.hset(who, sid, msgpack.packb([member.user, member.name]))
            pipe.sadd(self._index(namespace), room)
            await pipe.execute()
        return member.user not in before

    async def leave(self, namespace: str, room: str, sid: str) -> Member | None:
        exp, who = self._keys(namespace, room)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hget(who, sid)
            pipe.zrem(exp, sid)
            pipe.hdel(who, sid)
            raw, removed, _ = await pipe.execute()
        member = self._member(raw)
        if not removed or member is None:
            return None
        remaining = await self._users(namespace, room, time.time())
        return None if member.user in remaining else member

    async def members(self, namespace: str, room: str) -> list[Member]:
        users = await self._users(namespace, room, time.time())
        return [users[u] for u in sorted(users)]

    async def refresh(self, namespace: str, entries: list[tuple[str, str]], ttl: float) -> None:
        if not entries:
            return
        expires = time.time() + ttl
        async with self.client.pipeline(transaction=False) as pipe:
            for room, sid in entries:
                pipe.zadd(self._keys(namespace, room)[0], {sid: expires}, xx=True)
            await pipe.execute()

    async def expire(self, namespace: str) -> list[tuple[str, Member]]:
        now = time.time()
        gone = []
        for raw_room in await self.client.smembers(self._index(namespace)):
            room = raw_room.decode() if isinstance(raw_room, bytes) else raw_room
            exp, _ = self._keys(namespace, room)
            for raw_sid in await self.client.zrangebyscore(exp, "-inf", now):
                sid = raw_sid.decode() if isinstance(raw_sid, bytes) else raw_sid
                # leave() removes atomically: only one node reports each departure.
                member = await self.leave(namespace, room, sid)
                if member is not None:
                    gone.append((room, member))
            if not await self.client.zcard(exp):
                await self.client.srem(self._index(namespace), room)
        return gone
