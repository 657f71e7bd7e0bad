"""GameLobbyStore: the games waiting or running, as every node's lobby lists them.

Each entry is a game's public summary plus the node that runs it (commands for it are
forwarded there). Entries live ``ttl`` seconds unless their node refreshes them, so the games
of a node that died leave the lobby by themselves; at most ``max_games`` are listed at once.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import msgpack
import redis.asyncio as aioredis


class LobbyFull(Exception):
    """``max_games`` games are in the lobby already."""


class GameLobbyStore(Protocol):
    async def put(self, game_id: str, summary: dict[str, Any], ttl: float) -> None:
        """Add or refresh a game (its summary includes ``node``), for ``ttl`` seconds.

        :raises LobbyFull: a new game when ``max_games`` are listed already.
        """

    async def remove(self, game_id: str) -> None:
        """The game is over or gone."""

    async def get(self, game_id: str) -> dict[str, Any] | None:
        """A live game's summary."""

    async def games(self) -> list[dict[str, Any]]:
        """Every live game's summary, ordered by id."""


class MemoryGameLobbyStore:
    def __init__(self, max_games: int = 1000) -> None:
        self.max_games = max_games
        self._games: dict[str, tuple[float, dict[str, Any]]] = {}  # id -> (expires, summary)

    def _expire(self) -> None:
        now = time.monotonic()
        for game_id in [g for g, (expires, _) in self._games.items() if expires <= now]:
            del self._games[game_id]

    async def put(self, game_id: str, summary: dict[str, Any], ttl: float) -> None:
        self._expire()
        if game_id not in self._games and len(self._games) >= self.max_games:
            raise LobbyFull(game_id)
        self._games[game_id] = (time.monotonic() + ttl, dict(summary))

    async def remove(self, game_id: str) -> None:
        self._games.pop(game_id, None)

    async def get(self, game_id: str) -> dict[str, Any] | None:
        self._expire()
        item = self._games.get(game_id)
        return dict(item[1]) if item is not None else None

    async def games(self) -> list[dict[str, Any]]:
        self._expire()
        return [dict(summary) for _, (_, summary) in sorted(self._games.items())]

    def size(self) -> int:
        return len(self._games)


# KEYS: summaries, expiries. ARGV: now (ms). Drops expired games; returns every stored entry.
_PRUNE = """
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for _, id in ipairs(dead) do redis.call('HDEL', KEYS[1], id) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: summaries, expiries. ARGV: now (ms), id, entry, expires (ms), max games.
# Returns 1 when stored, 0 when the lobby is full.
_PUT = """
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for _, id in ipairs(dead) do redis.call('HDEL', KEYS[1], id) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
if not redis.call('ZSCORE', KEYS[2], ARGV[2]) and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[5]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
return 1
"""


class RedisGameLobbyStore:
    """A hash ``game id → msgpack {s: summary, u: expiry (ms)}`` and a sorted set of the
    expiries, under one hash tag (one cluster slot). Expired entries are removed by whoever
    reads or writes next (one node alive is enough); the count check and the write are one
    script, so nodes adding games at once cannot pass ``max_games`` together."""

    def __init__(self, client: aioredis.Redis, prefix: str = "rt", max_games: int = 1000) -> None:
        self.client = client
        self.key = f"{prefix}:{{games}}"
        self.keys = [self.key, self.key + ":expires"]
        self.max_games = max_games
        self._prune = client.register_script(_PRUNE)
        self._put = client.register_script(_PUT)

    async def _live(self) -> dict[str, dict[str, Any]]:
        now = int(time.time() * 1000)
        raw = await self._prune(keys=self.keys, args=[now])
        live, dead = {}, []
        for i in range(0, len(raw) - 1, 2):
            game_id = raw[i].decode() if isinstance(raw[i], bytes) else raw[i]
            entry = _decode(raw[i + 1])
            if entry is None or entry[0] <= now:
                dead.append(game_id)  # not ours to trust
            else:
                live[game_id] = entry[1]
        if dead:
            await self.client.hdel(self.key, *dead)
            await self.client.zrem(self.keys[1], *dead)
        return live

    async def put(self, game_id: str, summary: dict[str, Any], ttl: float) -> None:
        now = time.time()
        expires = int((now + ttl) * 1000)
        entry = msgpack.packb({"s": summary, "u": expires})
        if not await self._put(keys=self.keys, args=[int(now * 1000), game_id, entry, expires, self.max_games]):
            raise LobbyFull(game_id)

    async def remove(self, game_id: str) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hdel(self.key, game_id)
            pipe.zrem(self.keys[1], game_id)
            await pipe.execute()

    async def get(self, game_id: str) -> dict[str, Any] | None:
        entry = _decode(await self.client.hget(self.key, game_id))
        if entry is None or entry[0] <= int(time.time() * 1000):
            return None
        return entry[1]

    async def games(self) -> list[dict[str, Any]]:
        return [summary for _, summary in sorted((await self._live()).items())]


def _decode(raw: Any) -> tuple[int, dict[str, Any]] | None:
    if raw is None:
        return None
    try:
        value = msgpack.unpackb(raw)
    except Exception:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("s"), dict) or not isinstance(value.get("u"), int):
        return None
    return value["u"], value["s"]
