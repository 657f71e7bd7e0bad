"""Cluster: which nodes are alive, and request/reply between them.

Each node registers itself in Redis (a sorted set scored by expiry, refreshed by heartbeat,
with its HTTP address and load), so a dead node drops out by itself. Requests travel on the
:class:`~server.bus.Bus`: to one node, or to all (the caller knows how many replies to
expect from the registry). Without Redis the cluster is this node alone and every request is
answered locally, through the same handlers.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any, Awaitable, Callable, Collection

import msgpack
import redis.asyncio as aioredis
from realtime_channels.routes import NODE_TAG_LENGTH

from .bus import Bus

log = logging.getLogger("server.cluster")

RequestHandler = Callable[[dict[str, Any]], Awaitable[Any]]
HEARTBEAT = 2.0
NODE_TTL = 6.0


class ClusterError(Exception):
    """A node did not answer in time, or answered with an error."""


def new_node_tag() -> str:
    """A fresh prefix for the Engine.IO session ids of one node: tells other nodes the owner."""
    # Letters and digits, NODE_TAG_LENGTH of them: the shape realtime_channels.routes reads.
    return "".join(secrets.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
                   for _ in range(NODE_TAG_LENGTH))


class Cluster:
    """This node's view of the deployment.

    :param redis: the Redis client the registry lives in; None without Redis (a cluster of one).
    :param prefix: key prefix; the registry is ``<prefix>:{nodes}`` (live nodes scored by expiry)
        and ``<prefix>:{nodes}:info`` (their advertised info): one hash tag, so the transaction
        that writes both stays in one slot of a Redis Cluster.
    :param bus: carries requests and replies between nodes; None without Redis.
    :param node_id: this node's id in the registry.
    :param address: ``host:port`` other nodes can reach this node's HTTP server at.
    :param tag: the prefix of this node's Engine.IO session ids (:func:`new_node_tag`), advertised
        so other nodes can forward a session's requests here.
    :param sessions: this node's live Engine.IO sessions; their count is advertised as its load.
    :param started: when this node started (a Unix time), advertised.
    :param version: the server's version, advertised.
    """

    def __init__(self, redis: aioredis.Redis | None, prefix: str, bus: Bus | None, node_id: str, address: str,
                 tag: str, sessions: Collection[str], started: float, version: str) -> None:
        self.redis = redis
        self.bus = bus
        self.node = node_id
        self.address = address
        self.tag = tag
        self.sessions = sessions
        self.started = started
        self.version = version
        # Set when an operator drains this node; advertised, and /readyz answers "not ready".
        self.draining = False
        self._key = f"{prefix}:{{nodes}}"
        self.handlers: dict[str, RequestHandler] = {}
        self._waiting: dict[str, tuple[asyncio.Future, list[Any], int]] = {}
        self._task: asyncio.Task | None = None
        if bus is not None:
            bus.on("req", self._on_request)
            bus.on("rep", self._on_reply)

    def handle(self, kind: str, handler: RequestHandler) -> None:
        """Answer requests of ``kind`` with ``handler(body)``."""
        self.handlers[kind] = handler

    async def start(self) -> None:
        if self.redis is not None:
            await self._register()
            self._task = asyncio.create_task(self._heartbeat(), name="cluster-heartbeat")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        redis = self.redis
        if redis is not None:
            try:
                async with redis.pipeline(transaction=True) as pipe:
                    pipe.zrem(self._key, self.node)
                    pipe.hdel(self._key + ":info", self.node)
                    await pipe.execute()
            except Exception:
                pass

    def info(self) -> dict[str, Any]:
        return {"node": self.node, "tag": self.tag, "address": self.address, "connections": len(self.sessions),
                "started": self.started, "draining": self.draining, "version": self.version}

    async def _register(self) -> None:
        redis = self.redis
        assert redis is not None
        async with redis.pipeline(transaction=True) as pipe:
            pipe.zadd(self._key, {self.node: time.time() + NODE_TTL})
            pipe.hset(self._key + ":info", self.node, msgpack.packb(self.info()))
            pipe.zremrangebyscore(self._key, "-inf", time.time())
            await pipe.execute()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)
            try:
                await self._register()
            except Exception as exc:
                log.debug("node heartbeat failed: %s", exc)

    async def nodes(self) -> list[dict[str, Any]]:
        """Live nodes (this one included) with their address and load."""
        redis = self.redis
        if redis is None:
            return [self.info()]
        names = await redis.zrangebyscore(self._key, time.time(), "+inf")
        if not names:
            return [self.info()]
        raw = await redis.hmget(self._key + ":info", names)
        out = []
        for name, value in zip(names, raw):
            try:
                info = msgpack.unpackb(value) if value else None
            except Exception:
                info = None
            if isinstance(info, dict) and isinstance(info.get("node"), str):
                out.append(info)
        return out

    async def address_of(self, node: str) -> str | None:
        for info in await self.nodes():
            if info.get("node") == node and isinstance(info.get("address"), str):
                return info["address"]
        return None

    # ------------------------------------------------------------------ request / reply

    async def call(self, kind: str, body: dict[str, Any], node: str | None = None,
                   timeout: float = 3.0) -> Any:
        """Ask one node (``node``) and return its answer; raises ClusterError."""
        if node is None or node == self.node:
            return await self._local(kind, body)
        replies = await self._send(kind, body, node, 1, timeout)
        if not replies:
            raise ClusterError(f"node {node} did not answer {kind}")
        return replies[0]

    async def gather(self, kind: str, body: dict[str, Any], timeout: float = 3.0) -> list[Any]:
        """Ask every live node (this one included); answers of the nodes that replied in time."""
        local = await self._local(kind, body)
        others = [n["node"] for n in await self.nodes() if n["node"] != self.node]
        if not others or self.bus is None:
            return [local]
        return [local, *await self._send(kind, body, None, len(others), timeout)]

    async def _local(self, kind: str, body: dict[str, Any]) -> Any:
        handler = self.handlers.get(kind)
        if handler is None:
            raise ClusterError(f"no handler for {kind}")
        return await handler(body)

    async def _send(self, kind: str, body: dict[str, Any], node: str | None, expect: int,
                    timeout: float) -> list[Any]:
        if self.bus is None:  # without Redis no other node can be reached: nobody answers
            return []
        rid = secrets.token_hex(8)
        future = asyncio.get_running_loop().create_future()
        replies: list[Any] = []
        self._waiting[rid] = (future, replies, expect)
        try:
            await self.bus.publish("req", {"k": kind, "rid": rid, "to": node, "b": body})
            try:
                await asyncio.wait_for(future, timeout)
            except asyncio.TimeoutError:
                pass
            return list(replies)
        finally:
            self._waiting.pop(rid, None)

    async def _on_request(self, m: dict[str, Any]) -> None:
        kind, rid, to, body = m.get("k"), m.get("rid"), m.get("to"), m.get("b")
        if not isinstance(kind, str) or not isinstance(rid, str) or not isinstance(body, dict):
            return
        if to is not None and to != self.node:
            return
        handler = self.handlers.get(kind)
        if handler is None:
            return
        try:
            answer = {"ok": True, "v": await handler(body)}
        except Exception as exc:
            answer = {"ok": False, "e": str(exc)[:200]}
        assert self.bus is not None  # requests only arrive on the bus
        await self.bus.publish("rep", {"rid": rid, "to": m.get("n"), **answer})

    async def _on_reply(self, m: dict[str, Any]) -> None:
        if m.get("to") != self.node:
            return
        item = self._waiting.get(m.get("rid"))  # type: ignore[arg-type]
        if item is None:
            return
        future, replies, expect = item
        if m.get("ok"):
            replies.append(m.get("v"))
        else:
            replies.append(ClusterError(m.get("e") or "error"))
        if len(replies) >= expect and not future.done():
            future.set_result(None)
