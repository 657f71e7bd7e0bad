"""SessionStore: what a socket needs to be restored elsewhere (connection state recovery).

The session of every socket in a durable namespace is saved when it connects, when its rooms
change and by a heartbeat, and kept for ``max_disconnection_duration`` after the last save.
So a client whose node died (no disconnect handler ran) still finds its session on another
node. A session can be taken exactly once: the first CONNECT presenting its ``pid`` wins.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from realtime_channels.redis_batch import batcher_for
from realtime_channels.sharded_redis import ShardedRedis


# msgpack.packb makes a Packer per call; this one is reused (it resets after each pack, also
# after one that raised, and nothing here packs re-entrantly).
_pack = msgpack.Packer().pack


@dataclass
class SavedSession:
    """The state of one socket in one namespace, as stored between connections.

    :param positions: channel -> ``(offset, epoch)`` the client surely reached there (when it
        joined, recovered, or answered a ping): see :mod:`server.core.positions`. Its channels
        are the socket's rooms.
    :param trail: ``(channel, offset)`` of what was sent to the socket after ``positions``, in
        order (saved when the socket ends; empty in the heartbeat's saves).
    """

    sid: str
    pid: str
    namespace: str
    data: dict[str, Any] = field(default_factory=dict)
    positions: dict[str, tuple[int, str]] = field(default_factory=dict)
    trail: list[tuple[str, int]] = field(default_factory=list)

    def encode(self) -> bytes:
        positions = self.positions
        names = sorted(positions)
        trail: list[list[int]] = []
        if self.trail:  # empty in the saves of live sockets (connect, heartbeat): no index built
            # The trail names channels by their index in the sorted positions: a few bytes each.
            index = {name: i for i, name in enumerate(names)}
            trail = [[index[c], o] for c, o in self.trail if c in index]
        return _pack({"sid": self.sid, "pid": self.pid, "namespace": self.namespace, "data": self.data,
                      # (a position is a tuple: msgpack packs it as the array decode expects)
                      "channels": names, "at": [positions[n] for n in names], "trail": trail})

    @classmethod
    def decode(cls, raw: bytes) -> "SavedSession | None":
        """Parse stored bytes; anything malformed is treated as absent (never trusted)."""
        try:
            value = msgpack.unpackb(raw)
        except Exception:
            return None
        if not isinstance(value, dict):
            return None
        strings = ("sid", "pid", "namespace")
        if not all(isinstance(value.get(k), str) for k in strings):
            return None
        data, names, at, trail = value.get("data"), value.get("channels"), value.get("at"), value.get("trail")
        if not isinstance(data, dict) or not isinstance(names, list) or not isinstance(at, list):
            return None
        if len(names) != len(at) or not all(isinstance(n, str) for n in names):
            return None
        positions: dict[str, tuple[int, str]] = {}
        for name, item in zip(names, at):
            if (not isinstance(item, list) or len(item) != 2 or not _offset(item[0])
                    or not isinstance(item[1], str)):
                return None
            positions[name] = (item[0], item[1])
        if not isinstance(trail, list):
            return None
        entries: list[tuple[str, int]] = []
        for item in trail:
            if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], int)
                    or not 0 <= item[0] < len(names) or not _offset(item[1])):
                return None
            entries.append((names[item[0]], item[1]))
        return cls(**{k: value[k] for k in strings}, data=data, positions=positions, trail=entries)


def _offset(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 53


class SessionStore(Protocol):
    # Whether what it holds outlives this process (shared with the other nodes). When it does
    # not, a live socket's session is saved only when the socket ends: saving it while it is
    # live (on connect, on a room change, by the heartbeat) guards against this node's death,
    # which takes such a store with it.
    outlives_node: bool

    async def save(self, session: SavedSession, ttl: float) -> None:
        """Keep ``session`` for ``ttl`` seconds under its ``pid``."""

    async def take(self, pid: str) -> SavedSession | None:
        """Remove and return the session for ``pid`` (None if absent or expired)."""

    async def save_many(self, sessions: list[SavedSession], ttl: float) -> None:
        """Save several sessions (the heartbeat that keeps live sockets recoverable)."""


class MemorySessionStore:
    outlives_node = False

    def __init__(self) -> None:
        self._items: dict[str, tuple[float, SavedSession]] = {}
        self._next_sweep = 0.0

    async def save(self, session: SavedSession, ttl: float) -> None:
        now = time.monotonic()
        if now >= self._next_sweep:
            # Sweep (at most once a second) so abandoned sessions cannot accumulate.
            self._next_sweep = now + 1.0
            for pid in [p for p, (exp, _) in self._items.items() if exp <= now]:
                del self._items[pid]
        self._items[session.pid] = (now + ttl, session)

    async def save_many(self, sessions: list[SavedSession], ttl: float) -> None:
        for session in sessions:
            await self.save(session, ttl)

    async def take(self, pid: str) -> SavedSession | None:
        item = self._items.pop(pid, None)
        if item is None or item[0] <= time.monotonic():
            return None
        return item[1]


# The saves of one batch as one call: SET KEYS[i] ARGV[i + 1] PX ARGV[1] for every key. pcall:
# a key's error (WRONGTYPE, OOM) does not stop the other keys' saves; the first one is the
# call's error reply (the batch then fails as a whole, as its caller expects), else the count.
_SAVE_MANY = """
local failed, n = nil, 0
for i, key in ipairs(KEYS) do
  local set = redis.pcall('SET', key, ARGV[i + 1], 'PX', ARGV[1])
  if type(set) == 'table' and set.err then
    n = n + 1
    failed = failed or set.err
  end
end
if failed then
  return redis.error_reply(n .. ' of ' .. #KEYS .. ' sessions not saved: ' .. failed)
end
return #KEYS
"""

# Sessions in one script call at most: a heartbeat of many sockets makes several calls, so
# neither the request nor the time Redis spends in one script grows without bound.
SAVE_MANY_CHUNK = 500


class RedisSessionStore:
    """Sessions as keys ``<prefix>:session:<pid>`` with a TTL.

    Saves and takes go through a :func:`~realtime_channels.redis_batch.batcher_for` batcher:
    the saves of one loop turn (a connect storm's batch, the sockets a closing node ends, a
    heartbeat's) and the takes of reconnecting clients reach Redis as one pipeline, without
    redis-py's per-command path (its ``SET`` alone cost ~40 Python calls a connect).
    :meth:`save_many` sends its sessions as one script call per instance (per
    :data:`SAVE_MANY_CHUNK` sessions), not one ``SET`` each; on a Redis Cluster (keys in
    different slots) as a pipeline of ``SET`` instead.

    :param client: the Redis client the keys live in.
    :param prefix: the deployment's key prefix.
    """

    outlives_node = True

    def __init__(self, client: aioredis.Redis, prefix: str = "rt") -> None:
        self.client = client
        self.prefix = prefix
        self._send = batcher_for(client)
        self._save_script = client.register_script(_SAVE_MANY)
        # The instance of a key for sharded instances (one script call per instance), else None.
        self._route = client.shard_index if isinstance(client, ShardedRedis) else None

    def _key(self, pid: str) -> str:
        return f"{self.prefix}:session:{pid}"

    async def save(self, session: SavedSession, ttl: float) -> None:
        await self._send.command("SET", self._key(session.pid), session.encode(), "PX", max(1, int(ttl * 1000)))

    async def save_many(self, sessions: list[SavedSession], ttl: float) -> None:
        if not sessions:
            return
        ms = max(1, int(ttl * 1000))
        if isinstance(self.client, RedisCluster):
            # Not batched there (DirectCommands: each sent alone; a script's keys must share a
            # slot); the cluster's pipeline sends each node its commands in one round trip.
            async with self.client.pipeline(transaction=False) as pipe:
                for session in sessions:
                    pipe.set(self._key(session.pid), session.encode(), px=ms)
                await pipe.execute()
            return
        prefix = f"{self.prefix}:session:"
        route = self._route
        # instance -> (keys, values), in the order given
        groups: dict[int, tuple[list[str], list[bytes]]] = {}
        if route is None:
            groups[0] = ([prefix + s.pid for s in sessions], [s.encode() for s in sessions])
        else:
            for session in sessions:
                key = prefix + session.pid
                keys, values = groups.setdefault(route(key), ([], []))
                keys.append(key)
                values.append(session.encode())
        script, calls = self._send.script, []
        for keys, values in groups.values():
            for start in range(0, len(keys), SAVE_MANY_CHUNK):
                end = start + SAVE_MANY_CHUNK
                calls.append(script(self._save_script, keys[start:end], [ms, *values[start:end]]))
        # Each call awaited (so none is left with an unretrieved error); the first error raised.
        error: Exception | None = None
        for call in calls:
            try:
                await call
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error

    async def take(self, pid: str) -> SavedSession | None:
        raw = await self._send.command("GETDEL", self._key(pid))
        return SavedSession.decode(raw) if raw else None
