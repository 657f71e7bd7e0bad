"""OperatorSessionStore: the Admin UI's login sessions (``session`` event → ``auth.sessionId``).

Shared with Redis, so a reloaded page that reaches another node stays logged in. Bounded in age
(each session lives ``ttl`` seconds) and, in memory, in count (the oldest go first).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Protocol

import redis.asyncio as aioredis

ROLES = ("admin", "readonly")


class OperatorSessionStore(Protocol):
    async def remember(self, session_id: str, role: str, ttl: float) -> None:
        """Keep ``session_id`` as a login with ``role`` (admin or readonly) for ``ttl`` seconds.

        :raises ValueError: ``role`` is not one of :data:`ROLES`."""

    async def recall(self, session_id: str) -> str | None:
        """The role of a live session, None when unknown or expired."""


def _check(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"not an operator role: {role!r}")


class MemoryOperatorSessionStore:
    """:param max_sessions: sessions kept at most; past it the oldest is forgotten."""

    def __init__(self, max_sessions: int = 10_000) -> None:
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, tuple[float, str]] = OrderedDict()  # id -> (expires, role)

    async def remember(self, session_id: str, role: str, ttl: float) -> None:
        _check(role)
        now = time.monotonic()
        while self._sessions:  # the oldest first: expired ones are at the front
            oldest, (expires, _) = next(iter(self._sessions.items()))
            if expires > now and len(self._sessions) < self.max_sessions:
                break
            del self._sessions[oldest]
        self._sessions[session_id] = (now + ttl, role)

    async def recall(self, session_id: str) -> str | None:
        item = self._sessions.get(session_id)
        return item[1] if item is not None and item[0] > time.monotonic() else None

    def size(self) -> int:
        return len(self._sessions)


class RedisOperatorSessionStore:
    """One key per session with its TTL (single-key commands: any cluster slot will do)."""

    def __init__(self, client: aioredis.Redis, prefix: str = "rt") -> None:
        self.client = client
        self.prefix = prefix

    def _key(self, session_id: str) -> str:
        return f"{self.prefix}:admin-session:{session_id}"

    async def remember(self, session_id: str, role: str, ttl: float) -> None:
        _check(role)
        await self.client.set(self._key(session_id), role, px=max(1, int(ttl * 1000)))

    async def recall(self, session_id: str) -> str | None:
        role = await self.client.get(self._key(session_id))
        role = role.decode() if isinstance(role, bytes) else role
        return role if role in ROLES else None  # anything else in Redis is not trusted
