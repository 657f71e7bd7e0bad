"""ShardedRedis: several independent Redis instances behind the part of the ``redis.asyncio``
API the channel log, the emitters and the server's stores use.

Each command goes to the instance :func:`.sharding.shard_of` names for its first key (or
pub/sub channel); Lua scripts by their first key. Everything that touches several keys at once
(a script, a transaction) already keeps them under one hash tag for Redis Cluster, so it runs
on one instance here too; a transaction whose keys would span instances is refused rather than
split. A plain pipeline is split per instance (sent concurrently) and its replies put back in
order. Maintenance over the whole keyspace (``scan_iter``, ``dbsize``) visits every instance.

Pub/sub is not proxied: :class:`~.redis_pubsub.Subscriptions` keeps one connection per
instance (:meth:`ShardedRedis.shard_for`), as it keeps one per primary of a cluster.

A command this class does not route raises AttributeError rather than guess an instance.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any, AsyncIterator, Sequence

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from .sharding import instance_name, shard_of, shard_urls

# Commands whose first argument is the one key (or pub/sub channel) they touch.
KEY_COMMANDS = frozenset("""
    get set getdel getex getset setex psetex setnx incr incrby incrbyfloat decr decrby append strlen
    expire pexpire expireat pexpireat ttl pttl persist type
    hget hset hsetnx hmget hmset hgetall hdel hlen hexists hincrby hincrbyfloat hkeys hvals hstrlen
    lpush rpush lpop rpop lrange ltrim llen lrem lindex lset
    sadd srem smembers sismember smismember scard spop srandmember
    zadd zrem zrange zrangebyscore zrevrange zrevrangebyscore zremrangebyscore zremrangebyrank zcard
    zscore zmscore zincrby zrank zrevrank zcount zpopmin zpopmax
    xadd xrange xrevrange xlen xtrim xdel xinfo_stream
    publish spublish
""".split())
# Commands that may name several keys: split per instance, their integer replies summed.
COUNTING_COMMANDS = frozenset({"delete", "unlink", "exists", "touch"})
# Pipeline commands without a key: they run on the instance of the command before them
# (WAIT counts the replicas that have this connection's last write).
FOLLOWING_COMMANDS = frozenset({"wait", "ping", "time", "echo"})
# Script commands: the key is the third argument (sha or text, number of keys, keys...).
SCRIPT_COMMANDS = frozenset({"evalsha", "eval", "evalsha_ro", "eval_ro"})


def _key_of(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """The argument that routes command ``name``."""
    if name in SCRIPT_COMMANDS:
        if len(args) < 3 or not int(args[1]):
            raise ValueError(f"{name} on sharded Redis needs at least one key to choose an instance")
        return args[2]
    if args:
        return args[0]
    for keyword in ("name", "channel", "key"):
        if keyword in kwargs:
            return kwargs[keyword]
    raise ValueError(f"{name} on sharded Redis needs a key to choose an instance")


class ShardedRedis:
    """Independent Redis instances, each name routed by its hash tag.

    :param shards: one ``redis.asyncio.Redis`` per instance, in the configured order (the
        order is the routing); closed by :meth:`aclose`.
    :param names: how each instance is called in logs (``host:port``); defaults to its index.
    """

    def __init__(self, shards: Sequence[aioredis.Redis], names: Sequence[str] | None = None) -> None:
        if not shards:
            raise ValueError("ShardedRedis needs at least one instance")
        self.shards = list(shards)
        self.names = list(names) if names is not None else [f"shard{i}" for i in range(len(self.shards))]
        if len(self.names) != len(self.shards):
            raise ValueError("one name per instance")

    @classmethod
    def from_url(cls, url: str, **options: Any) -> "ShardedRedis":
        """Instances of a ``redis+shards://h1:p1,h2:p2[/db]`` URL (see :mod:`.sharding`), each a
        ``redis.asyncio.Redis.from_url(instance_url, **options)``."""
        urls = shard_urls(url)
        return cls([aioredis.Redis.from_url(u, **options) for u in urls], [instance_name(u) for u in urls])

    # ---------------------------------------------------------------- routing

    def shard_index(self, name: str | bytes) -> int:
        """The index of the instance holding ``name``."""
        return shard_of(name, len(self.shards))

    def shard_for(self, name: str | bytes) -> aioredis.Redis:
        """The client of the instance holding ``name``."""
        return self.shards[shard_of(name, len(self.shards))]

    def __getattr__(self, name: str) -> Any:
        if name in KEY_COMMANDS or name in SCRIPT_COMMANDS:
            def routed(*args: Any, **kwargs: Any) -> Any:
                return getattr(self.shard_for(_key_of(name, args, kwargs)), name)(*args, **kwargs)
            routed.__name__ = name
            self.__dict__[name] = routed  # made once: the next lookup finds it without __getattr__
            return routed
        if name in COUNTING_COMMANDS:
            async def counted(*keys: Any) -> int:
                by_shard: dict[int, list[Any]] = defaultdict(list)
                for key in keys:
                    by_shard[self.shard_index(key)].append(key)
                replies = await asyncio.gather(*(getattr(self.shards[i], name)(*group)
                                                 for i, group in by_shard.items()))
                return sum(int(r) for r in replies)
            return counted
        raise AttributeError(f"{type(self).__name__} does not route {name!r} (not a single-key command)")

    # ---------------------------------------------------------------- scripts

    def get_encoder(self) -> Any:
        return self.shards[0].get_encoder()

    def register_script(self, script: str | bytes) -> AsyncScript:
        """A script run with ``evalsha`` on the instance of its first key (loaded there on first use)."""
        return AsyncScript(self, script)

    async def script_load(self, script: str | bytes) -> str:
        """Load ``script`` on every instance; returns its SHA1."""
        shas = await asyncio.gather(*(s.script_load(script) for s in self.shards))
        return shas[0]

    # ---------------------------------------------------------------- every instance

    async def ping(self) -> bool:
        """PING every instance (raises if one does not answer)."""
        await asyncio.gather(*(s.ping() for s in self.shards))
        return True

    async def dbsize(self) -> int:
        return sum(int(n) for n in await asyncio.gather(*(s.dbsize() for s in self.shards)))

    async def flushall(self) -> bool:
        await asyncio.gather(*(s.flushall() for s in self.shards))
        return True

    async def scan_iter(self, match: Any = None, count: int | None = None, _type: str | None = None,
                        **kwargs: Any) -> AsyncIterator[Any]:
        """SCAN every instance in turn (maintenance such as ``trim_expired`` sees every key)."""
        for shard in self.shards:
            async for key in shard.scan_iter(match=match, count=count, _type=_type, **kwargs):
                yield key

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> "ShardedPipeline":
        return ShardedPipeline(self, transaction)

    async def aclose(self) -> None:
        await asyncio.gather(*(s.aclose() for s in self.shards), return_exceptions=True)

    async def __aenter__(self) -> "ShardedRedis":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class ShardedPipeline:
    """Commands buffered, then sent per instance in one round trip each.

    :param transaction: MULTI/EXEC on the instance; every command must then route to the same
        instance (ValueError at :meth:`execute` otherwise, before anything is sent).
    """

    def __init__(self, client: ShardedRedis, transaction: bool) -> None:
        self.client = client
        self.transaction = transaction
        self._commands: list[tuple[int, str, tuple[Any, ...], dict[str, Any]]] = []

    def __len__(self) -> int:
        return len(self._commands)

    def __getattr__(self, name: str) -> Any:
        if name in FOLLOWING_COMMANDS:
            def following(*args: Any, **kwargs: Any) -> "ShardedPipeline":
                if not self._commands:
                    raise ValueError(f"{name} in a sharded pipeline follows a command that names a key")
                self._commands.append((self._commands[-1][0], name, args, kwargs))
                return self
            return following
        if name in KEY_COMMANDS or name in SCRIPT_COMMANDS or name in COUNTING_COMMANDS:
            def buffered(*args: Any, **kwargs: Any) -> "ShardedPipeline":
                if name in COUNTING_COMMANDS and len(args) != 1:
                    raise ValueError(f"{name} in a sharded pipeline takes one key")
                index = self.client.shard_index(_key_of(name, args, kwargs))
                self._commands.append((index, name, args, kwargs))
                return self
            return buffered
        raise AttributeError(f"{type(self).__name__} does not route {name!r} (not a single-key command)")

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        commands, self._commands = self._commands, []
        by_shard: dict[int, list[int]] = defaultdict(list)
        for position, (index, *_) in enumerate(commands):
            by_shard[index].append(position)
        if self.transaction and len(by_shard) > 1:
            names = sorted({self.client.names[i] for i in by_shard})
            raise ValueError(f"a transaction's keys must share a hash tag: these span instances {names}")

        async def run(index: int, positions: list[int]) -> list[Any]:
            async with self.client.shards[index].pipeline(transaction=self.transaction) as pipe:
                for position in positions:
                    _, name, args, kwargs = commands[position]
                    getattr(pipe, name)(*args, **kwargs)
                return await pipe.execute(raise_on_error=raise_on_error)

        groups = list(by_shard.items())
        replies = await asyncio.gather(*(run(i, p) for i, p in groups), return_exceptions=True)
        out: list[Any] = [None] * len(commands)
        for (_, positions), reply in zip(groups, replies):
            if isinstance(reply, BaseException):
                raise reply
            for position, value in zip(positions, reply):
                out[position] = value
        return out

    def reset(self) -> None:
        self._commands = []

    async def __aenter__(self) -> "ShardedPipeline":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.reset()
