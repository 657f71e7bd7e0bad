"""Bus: messages between nodes over Redis pub/sub, for what is not durable.

Volatile emits and events of namespaces without a log travel here; a node that is away from
Redis misses them, which is what volatile means. Durable events never use the bus: they go
through the EventLog, which nodes read in order and catch up on after an outage.

Everything read from the bus is validated before use (msgpack, never pickle).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

import msgpack
import redis.asyncio as aioredis

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

    :param client: the Redis client.
    :param prefix: key prefix; the channel is ``<prefix>:bus``.
    :param node_id: this node's id: stamped on what it publishes, and its own messages are ignored.
    :param metrics: counts a failed publish or a lost subscription in ``redis_errors``.
    """

    def __init__(self, client: aioredis.Redis, prefix: str, node_id: str, metrics: Metrics) -> None:
        self.client = client
        self.channel = f"{prefix}:bus"
        self.node = node_id
        self.metrics = metrics
        self.handlers: dict[str, Handler] = {}
        self._task: asyncio.Task | None = None
        self.healthy = False

    def on(self, kind: str, handler: Handler) -> None:
        """Handle messages of ``kind`` from the other nodes with ``handler(message)``."""
        self.handlers[kind] = handler

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="bus-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def publish(self, kind: str, body: dict[str, Any]) -> None:
        message = msgpack.packb({"t": kind, "n": self.node, **body}, use_bin_type=True)
        try:
            await self.client.publish(self.channel, message)
        except Exception as exc:
            self.metrics.redis_errors.inc()
            log.warning("bus publish failed (%s): %s", kind, exc)

    async def publish_emit(self, namespace: str, event: str, args: list[Any], rooms: list[str] | None,
                           skip: list[str], volatile: bool) -> None:
        await self.publish("emit", {"ns": namespace, "e": event, "a": args, "r": rooms, "x": skip,
                                    "v": volatile})

    async def _listen(self) -> None:
        backoff = 0.05
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.healthy = True
                backoff = 0.05
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        await self._dispatch(message.get("data"))
            except asyncio.CancelledError:
                await asyncio.shield(pubsub.aclose())
                raise
            except Exception as exc:
                if self.healthy:
                    log.warning("bus connection lost: %s", exc)
                self.healthy = False
                self.metrics.redis_errors.inc()
            try:
                await pubsub.aclose()
            except Exception:
                pass
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

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
