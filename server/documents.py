"""DocumentStore: CRDT documents as a snapshot plus the updates since, compacted now and then.

Updates are Yjs binary updates (``pycrdt`` on the server, ``yjs`` in browsers speak the same
format); they commute, so the order nodes store them in does not matter for convergence.

Each document also remembers which user each Yjs client id belongs to (the first user who
wrote with it), for as long as the document exists, so nobody writes in another's name.
"""

from __future__ import annotations

from typing import Iterable, Protocol

import redis.asyncio as aioredis


class DocumentStore(Protocol):
    async def load(self, doc: str) -> tuple[bytes | None, list[bytes]]:
        """The snapshot (None for a new document) and the updates stored after it."""

    async def append(self, doc: str, update: bytes) -> int:
        """Store an update; returns how many updates follow the snapshot now."""

    async def compact(self, doc: str, snapshot: bytes, merged: int) -> None:
        """Replace the snapshot with one that includes the first ``merged`` updates."""

    async def owners(self, doc: str, clients: Iterable[int]) -> dict[int, str | None]:
        """The user each Yjs client id is bound to in ``doc`` (None: not bound yet)."""

    async def claim(self, doc: str, clients: Iterable[int], user: str) -> dict[int, str]:
        """Bind the client ids not bound yet to ``user``, atomically; returns each id's owner."""


class MemoryDocumentStore:
    def __init__(self) -> None:
        self._docs: dict[str, tuple[bytes | None, list[bytes]]] = {}
        self._clients: dict[str, dict[int, str]] = {}  # doc -> Yjs client id -> user

    async def load(self, doc: str) -> tuple[bytes | None, list[bytes]]:
        snapshot, updates = self._docs.get(doc, (None, []))
        return snapshot, list(updates)

    async def append(self, doc: str, update: bytes) -> int:
        snapshot, updates = self._docs.setdefault(doc, (None, []))
        updates.append(update)
        return len(updates)

    async def compact(self, doc: str, snapshot: bytes, merged: int) -> None:
        _, updates = self._docs.get(doc, (None, []))
        self._docs[doc] = (snapshot, updates[merged:])

    async def owners(self, doc: str, clients: Iterable[int]) -> dict[int, str | None]:
        bound = self._clients.get(doc, {})
        return {client: bound.get(client) for client in clients}

    async def claim(self, doc: str, clients: Iterable[int], user: str) -> dict[int, str]:
        bound = self._clients.setdefault(doc, {})
        return {client: bound.setdefault(client, user) for client in clients}


class RedisDocumentStore:
    """Shared store: per document a snapshot string, an update list, a compaction lock and a
    client-id hash, all under the document's hash tag (one cluster slot)."""

    def __init__(self, client: aioredis.Redis, prefix: str = "rt") -> None:
        self.client = client
        self.prefix = prefix

    def _keys(self, doc: str) -> tuple[str, str, str]:
        # One hash tag per document: load's and compact's transactions touch one cluster slot.
        base = f"{self.prefix}:doc:{{{doc}}}"
        return base + ":snapshot", base + ":updates", base + ":compacting"

    def _clients_key(self, doc: str) -> str:
        return f"{self.prefix}:doc:{{{doc}}}:clients"  # hash: Yjs client id -> user

    async def load(self, doc: str) -> tuple[bytes | None, list[bytes]]:
        snap_key, updates_key, _ = self._keys(doc)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.get(snap_key)
            pipe.lrange(updates_key, 0, -1)
            snapshot, updates = await pipe.execute()
        return snapshot, list(updates)

    async def append(self, doc: str, update: bytes) -> int:
        return int(await self.client.rpush(self._keys(doc)[1], update))

    async def compact(self, doc: str, snapshot: bytes, merged: int) -> None:
        snap_key, updates_key, lock = self._keys(doc)
        # One node compacts at a time; a loser simply skips (the next append triggers again).
        if not await self.client.set(lock, b"1", nx=True, px=10_000):
            return
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.set(snap_key, snapshot)
                pipe.ltrim(updates_key, merged, -1)
                await pipe.execute()
        finally:
            await self.client.delete(lock)

    async def owners(self, doc: str, clients: Iterable[int]) -> dict[int, str | None]:
        ids = list(clients)
        if not ids:
            return {}
        users = await self.client.hmget(self._clients_key(doc), [str(c) for c in ids])
        return {c: (u.decode() if isinstance(u, bytes) else u) for c, u in zip(ids, users)}

    async def claim(self, doc: str, clients: Iterable[int], user: str) -> dict[int, str]:
        ids = list(clients)
        if not ids:
            return {}
        key = self._clients_key(doc)
        # One transaction: two nodes claiming the same id for different users cannot both win.
        async with self.client.pipeline(transaction=True) as pipe:
            for c in ids:
                pipe.hsetnx(key, str(c), user)
            pipe.hmget(key, [str(c) for c in ids])
            *_, users = await pipe.execute()
        return {c: (u.decode() if isinstance(u, bytes) else u) for c, u in zip(ids, users)}
