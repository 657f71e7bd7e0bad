"""Emitters: publish to the realtime server's clients from any Python process.

:class:`Emitter` (redis-py, for Django views, Celery tasks, scripts) and :class:`AsyncEmitter`
(``redis.asyncio``) write straight to Redis, through the very same Lua publish script and key
layout the server uses (:mod:`.redis_channel_log`): one atomic step that dedupes, appends with
the next offset, trims and notifies every node. :class:`HttpEmitter` (:mod:`.http_emitter`)
calls the server's ``POST /api/v1/publish`` instead, for apps that cannot reach Redis.

Their call shape is python-socketio's write-only manager's, plus ``idempotency_key``::

    emitter = Emitter("redis://localhost:6379/0")   # or the server's redis+shards://h1:p1,h2:p2 URL
    emitter.emit("order_shipped", {"id": 42}, to="user:alice", namespace="/chat")
    # {"offset": 7, "epoch": "5b1f...", "duplicate": False}

What ``data``, ``to`` / ``room`` and ``skip_sid`` mean: :mod:`.addressing`.

**Only durable namespaces deliver.** The server delivers channel publications in the
namespaces of its ``delivery.durable_namespaces`` (``/chat`` and ``/collab`` by default), in
offset order, recoverably (the official JS client recovers missed ones after a cut). A publish
to any other namespace is stored but no node delivers it. Use the server's key prefix
(``redis.key_prefix``, ``rt`` by default) and, when its ``[delivery]`` limits differ from the
defaults, the same :class:`~.channel_log.ChannelBounds`: every publish trims the channel with
the bounds it is given.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis

from .addressing import answer, parse_emit
from .channel_log import ChannelBounds
from .http_emitter import HttpEmitter, PublishError
from .redis_channel_log import (
    PUBLISH_SCRIPT,
    RedisChannelLog,
    check_prefix,
    publish_call,
    publish_error,
    publish_result,
)
from .sharded_redis import ShardedRedis
from .sharding import is_shards_url, shard_of, shard_urls

__all__ = ["AsyncEmitter", "Emitter", "HttpEmitter", "PublishError"]

Answer = dict[str, Any]


def _binary_client(client: Any) -> Any:
    if client.get_encoder().decode_responses:
        raise ValueError("the Redis client must use decode_responses=False (publications are binary)")
    return client


class Emitter:
    """Publishes to the server's channels through a synchronous redis-py client. Thread-safe
    (redis-py's connection pool); after a fork (Celery's prefork pool) the pool reconnects.

    :param url: the server's Redis (``REDIS_URL``); or pass ``client``. A
        ``redis+shards://h1:p1,h2:p2`` URL (the server's, same instances in the same order)
        publishes each channel on the instance the server reads it from (:mod:`.sharding`).
    :param client: a ``redis.Redis`` or ``redis.RedisCluster`` with ``decode_responses=False``
        (the default), e.g. for Sentinel; the emitter does not close it.
    :param prefix: the server's ``redis.key_prefix``.
    :param bounds: the server's channel limits (``delivery.log_max_length``, ``log_max_age``,
        ``dedupe_ttl``); the defaults are the server's defaults.
    :param sharded: notify with SPUBLISH, as a server on a Redis Cluster does.
    :param redis_options: extra keyword arguments for ``redis.Redis.from_url``.
    """

    def __init__(self, url: str | None = None, *, client: redis.Redis | redis.RedisCluster | None = None,
                 prefix: str = "rt", bounds: ChannelBounds = ChannelBounds(), sharded: bool = False,
                 redis_options: dict[str, Any] | None = None) -> None:
        if (url is None) == (client is None):
            raise ValueError("give a Redis url or a client, not both")
        self._owned = client is None
        if client is not None:
            self.clients = [_binary_client(client)]
        else:
            urls = shard_urls(url) if is_shards_url(url) else [url]
            self.clients = [_binary_client(redis.Redis.from_url(u, **(redis_options or {}))) for u in urls]
        # The client of a single Redis (or a cluster); the first instance of several.
        self.client = self.clients[0]
        self.prefix = check_prefix(prefix)
        self.bounds = bounds
        self.sharded = sharded
        self._script = self.client.register_script(PUBLISH_SCRIPT)

    def emit(self, event: str, data: Any = None, *, to: Any = None, room: Any = None, namespace: str = "/",
             skip_sid: Any = None, idempotency_key: str | None = None, callback: Any = None) -> Answer | list[Answer]:
        """Publish ``event`` with ``data`` to ``to`` / ``room`` (a room name or socket id, a
        list of them, or None for the whole namespace) of ``namespace``.

        :param skip_sid: a socket id (or a list) that must not receive it.
        :param idempotency_key: within the server's ``delivery.dedupe_ttl``, publishing again
            with the same key to the same room publishes nothing and returns the first
            ``{offset, epoch}`` (``duplicate`` True): retries are safe.
        :param callback: not supported (no server to receive the ack): RuntimeError.
        :returns: ``{offset, epoch, duplicate}``, or a list of them (in order) when a list of
            rooms was given.
        :raises ValueError: a bad argument (nothing published); ``redis.RedisError`` when
            Redis failed (publications to earlier rooms of a list may have been made: retry
            with the same ``idempotency_key``).
        """
        emit = parse_emit(event, data, to, room, namespace, skip_sid, callback)
        answers = [self._publish(channel, payload, idempotency_key) for channel, payload in emit.publications()]
        return answers if emit.many else answers[0]

    def _publish(self, channel: str, data: bytes, idempotency_key: str | None) -> Answer:
        keys, args = publish_call(self.prefix, channel, data, self.bounds,
                                  idempotency_key=idempotency_key, sharded=self.sharded)
        try:
            # The instance of the channel's hash tag (the only one when not sharded).
            reply = self._script(keys=keys, args=args, client=self.clients[shard_of(keys[0], len(self.clients))])
        except redis.ResponseError as exc:
            raise publish_error(exc) from None
        return answer(publish_result(reply, keys[1]))

    def close(self) -> None:
        """Close the client if the emitter made it (from ``url``)."""
        if self._owned:
            for client in self.clients:
                client.close()

    def __enter__(self) -> "Emitter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncEmitter:
    """:class:`Emitter` on ``redis.asyncio``: the server's own :class:`RedisChannelLog`
    publish, for asyncio apps (an ASGI Django view, FastAPI, an aiohttp worker).

    Parameters as :class:`Emitter`'s; ``client`` is a ``redis.asyncio.Redis``, ``RedisCluster``
    or :class:`~.sharded_redis.ShardedRedis`.
    """

    def __init__(self, url: str | None = None, *,
                 client: aioredis.Redis | aioredis.RedisCluster | ShardedRedis | None = None,
                 prefix: str = "rt", bounds: ChannelBounds = ChannelBounds(), sharded: bool = False,
                 redis_options: dict[str, Any] | None = None) -> None:
        if (url is None) == (client is None):
            raise ValueError("give a Redis url or a client, not both")
        self._owned = client is None
        if client is None:
            client = (ShardedRedis.from_url(url, **(redis_options or {})) if is_shards_url(url)
                      else aioredis.Redis.from_url(url, **(redis_options or {})))
        self.client = _binary_client(client)
        self.log = RedisChannelLog(self.client, prefix=prefix, bounds=bounds, sharded=sharded)

    async def emit(self, event: str, data: Any = None, *, to: Any = None, room: Any = None, namespace: str = "/",
                   skip_sid: Any = None, idempotency_key: str | None = None,
                   callback: Any = None) -> Answer | list[Answer]:
        """As :meth:`Emitter.emit`."""
        emit = parse_emit(event, data, to, room, namespace, skip_sid, callback)
        answers = [answer(await self.log.publish(channel, payload, idempotency_key=idempotency_key))
                   for channel, payload in emit.publications()]
        return answers if emit.many else answers[0]

    async def close(self) -> None:
        """Close the client if the emitter made it (from ``url``)."""
        await self.log.close()
        if self._owned:
            await self.client.aclose()

    async def __aenter__(self) -> "AsyncEmitter":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
