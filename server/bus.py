"""Bus: messages between nodes over Redis pub/sub, for what is not durable.

Volatile emits and events of namespaces without a log travel here; a node that is away from
Redis misses them, which is what volatile means. Durable events never use the bus: they go
through the channel log, which nodes read in order and catch up on after an outage.

Everything read from the bus is validated before use (msgpack, never pickle).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

import msgpack
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from realtime_channels.redis_pubsub import Subscriptions

from .metrics import Metrics

log = logging.getLogger("server.bus")

Handler = Callable[[dict[str, Any]], Awaitable[None]]
# Delivers an event to this node's own sockets: ``(namespace, event, args, rooms, skip, volatile=)``
# (``RealtimeManager.deliver_local``).
DeliverLocal = Callable[..., object]


class Bus:
    """Pub/sub between the nodes of one deployment.

    The bus depends on Redis alone; what it carries is handled by whoever subscribes with
    :meth:`on` (the manager's emits, the cluster's requests, the server's evictions). Those
    parts themselves publish on the bus, so they are built after it and subscribe then.

    One notification channel, ``<prefix>:{bus}``. On a Redis Cluster it is a shard channel
    (SPUBLISH/SSUBSCRIBE on the primary that owns the slot of ``{bus}``): plain PUBLISH would
    be broadcast over the cluster bus to every node, and a plain SUBSCRIBE connection does not
    move after a failover. The subscription is kept by the channel log's
    :class:`~realtime_channels.redis_pubsub.Subscriptions` — resubscribed after a lost
    connection, a failover or a slot migration, on whichever primary then owns the slot.
    Messages published in between are lost: the bus is for what may be lost.

    :param client: the Redis client (``redis.asyncio.Redis`` or ``RedisCluster``).
    :param prefix: key prefix; the channel is ``<prefix>:{bus}``.
    :param node_id: this node's id: stamped on what it publishes, and its own messages are ignored.
    :param metrics: counts a failed publish or a lost subscription in ``redis_errors``.
    :param subscribe_timeout: seconds :meth:`start` waits for Redis to confirm the subscription
        (then it carries on; the subscription keeps being retried).
    """

    def __init__(self, client: aioredis.Redis | RedisCluster, prefix: str, node_id: str, metrics: Metrics,
                 subscribe_timeout: float = 10.0) -> None:
        self.client = client
        self.channel = f"{prefix}:{{bus}}"
        self.sharded = isinstance(client, RedisCluster)
        self.node = node_id
        self.metrics = metrics
        self.subscribe_timeout = subscribe_timeout
        self.handlers: dict[str, Handler] = {}
        self._subscriptions = Subscriptions(client, sharded=self.sharded, on_message=self._on_message,
                                            on_resync=self._on_resync, subscribe_timeout=subscribe_timeout)
        self._task: asyncio.Task | None = None
        self._dispatching: set[asyncio.Task] = set()
        self.healthy = False

    def on(self, kind: str, handler: Handler) -> None:
        """Handle messages of ``kind`` from the other nodes with ``handler(message)``."""
        self.handlers[kind] = handler

    async def start(self) -> None:
        """Subscribe; returns once Redis confirmed it, or after ``subscribe_timeout`` (a node
        starts while Redis is away: the subscription is made when it comes back)."""
        self._task = asyncio.create_task(self._subscribe(), name="bus-subscribe")
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self.subscribe_timeout)
        except asyncio.TimeoutError:
            log.warning("bus: no subscription confirmed yet, still trying")

    async def _subscribe(self) -> None:
        backoff = 0.05
        while True:
            try:
                await self._subscriptions.subscribe([self.channel.encode()])
                self.healthy = True
                return
            except asyncio.TimeoutError:
                return  # stays subscribed: confirmed later (then _on_resync)
            except Exception as exc:
                # A cluster whose topology cannot be read yet, or an unreachable Redis.
                self.metrics.redis_errors.inc()
                log.warning("bus: subscribing failed, retrying: %s", exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._subscriptions.close()
        for task in list(self._dispatching):
            task.cancel()
        await asyncio.gather(*self._dispatching, return_exceptions=True)

    async def publish(self, kind: str, body: dict[str, Any]) -> None:
        message = msgpack.packb({"t": kind, "n": self.node, **body}, use_bin_type=True)
        try:
            if self.sharded:
                await self.client.spublish(self.channel, message)
            else:
                await self.client.publish(self.channel, message)
        except Exception as exc:
            self.metrics.redis_errors.inc()
            log.warning("bus publish failed (%s): %s", kind, exc)

    async def publish_emit(self, namespace: str, event: str, args: list[Any], rooms: list[str] | None,
                           skip: list[str], volatile: bool) -> None:
        await self.publish("emit", {"ns": namespace, "e": event, "a": args, "r": rooms, "x": skip,
                                    "v": volatile})

    def _on_message(self, name: bytes, raw: bytes) -> None:
        # Called by the subscription's reader: a handler that waits (a request answered
        # with Redis reads) must not hold up the messages behind it.
        task = asyncio.get_running_loop().create_task(self._dispatch(raw))
        self._dispatching.add(task)
        task.add_done_callback(self._dispatching.discard)

    def _on_resync(self, name: bytes) -> None:
        # Resubscribed after a lost connection or a failover: what was published meanwhile
        # is gone (volatile); requests waiting for a reply time out.
        self.healthy = True
        self.metrics.redis_errors.inc()
        log.warning("bus: resubscribed; messages published meanwhile are lost")

    async def _dispatch(self, raw: Any) -> None:
        try:
            message = msgpack.unpackb(raw, raw=False)
        except Exception:
            log.warning("ignoring undecodable bus message")
            return
        if not isinstance(message, dict) or message.get("n") == self.node:
            return
        handler = self.handlers.get(message.get("t"))  # type: ignore[arg-type]
        if handler is None:
            return
        try:
            await handler(message)
        except Exception:
            log.exception("bus handler %s failed", message.get("t"))


def emit_handler(deliver: DeliverLocal) -> Handler:
    """The handler of ``emit`` messages (another node's :meth:`Bus.publish_emit`): validated,
    then handed to ``deliver`` for this node's own sockets.

    :param deliver: ``RealtimeManager.deliver_local``.
    """
    async def on_emit(m: dict[str, Any]) -> None:
        ns, event, args, rooms, skip = m.get("ns"), m.get("e"), m.get("a"), m.get("r"), m.get("x")
        if not (isinstance(ns, str) and isinstance(event, str) and isinstance(args, list)
                and (rooms is None or (isinstance(rooms, list) and all(isinstance(r, str) for r in rooms)))
                and isinstance(skip, list) and all(isinstance(s, str) for s in skip)):
            log.warning("ignoring malformed emit on the bus")
            return
        deliver(ns, event, args, rooms, skip, volatile=bool(m.get("v")))
    return on_emit
