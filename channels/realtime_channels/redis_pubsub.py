"""Channel subscriptions over Redis pub/sub, kept alive across lost connections and failovers.

One pub/sub connection per Redis server: a single one for a standalone server, one per primary
in a Redis Cluster, where each channel is SSUBSCRIBEd on the primary that owns its slot.

:meth:`Subscriptions.subscribe` returns once Redis has confirmed every channel, so a history
read after it misses nothing. When a connection drops (or a cluster moves a slot, or a primary
fails over), its channels are subscribed again — on the new owner, after a topology refresh, in
a cluster — and each confirmation nobody is waiting for means notifications may have been
missed: the owner's ``on_resync(name)`` is called so it can read that channel's history.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Any, Callable

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from .sharded_redis import ShardedRedis

log = logging.getLogger("realtime_channels.redis_pubsub")

# Channel names per SUBSCRIBE command: one command per batch keeps each reply small.
BATCH = 500


class Throttled:
    """One log line per ``interval`` seconds at most, so bad input or a long outage cannot
    flood the log."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger = logger
        self.interval = interval
        self._next = 0.0
        self._suppressed = 0

    def warning(self, message: str, *args: Any, exc_info: bool = False) -> None:
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return
        self._next = now + self.interval
        if self._suppressed:
            message += f" ({self._suppressed} similar suppressed)"
            self._suppressed = 0
        self.logger.warning(message, *args, exc_info=exc_info)


class _Link:
    """One pub/sub connection to one Redis server and the names subscribed on it."""

    def __init__(self, key: str, client: aioredis.Redis, owned: bool) -> None:
        self.key = key            # "" for a standalone server, else the node's name
        self.client = client
        self.owned = owned        # a client made for this link, closed with it
        self.names: set[bytes] = set()
        self.pubsub: aioredis.client.PubSub | None = None
        self.reader: asyncio.Task | None = None
        # The connection the reader is waiting on for a message, while it waits.
        self.reading: aioredis.client.PubSub | None = None
        self.lock = asyncio.Lock()


class Subscriptions:
    """Subscribed notification names and the connections that carry them.

    :param client: ``redis.asyncio.Redis``, ``RedisCluster`` or :class:`~.sharded_redis.ShardedRedis`
        (``decode_responses=False``); with several instances each name is subscribed on the
        instance its hash tag routes to, one connection per instance.
    :param sharded: SSUBSCRIBE instead of SUBSCRIBE (required for a cluster).
    :param on_message: called with (name, payload) for each message on a subscribed name.
    :param on_resync: called with a name whose subscription was re-established without
        anyone waiting for it: messages in between may be lost.
    :param subscribe_timeout: seconds :meth:`subscribe` waits for confirmations.
    :param ping_interval: seconds of silence after which a connection is pinged; silence for
        twice this long counts as a dead connection.
    """

    def __init__(self, client: aioredis.Redis | RedisCluster | ShardedRedis, *, sharded: bool,
                 on_message: Callable[[bytes, bytes], None], on_resync: Callable[[bytes], None],
                 subscribe_timeout: float = 10.0, ping_interval: float = 15.0) -> None:
        self.client = client
        self.cluster = isinstance(client, RedisCluster)
        self.shards = isinstance(client, ShardedRedis)
        if self.cluster and not sharded:
            raise ValueError("a Redis Cluster needs sharded=True (SSUBSCRIBE on each channel's shard)")
        self.sharded = sharded
        self.on_message = on_message
        self.on_resync = on_resync
        self.subscribe_timeout = subscribe_timeout
        self.ping_interval = ping_interval
        self._links: dict[str, _Link] = {}
        self._link_of: dict[bytes, _Link] = {}
        self._waiters: dict[bytes, list[asyncio.Future]] = {}
        # Names to subscribe, per link, gathered during a loop turn; the task sending them.
        self._queued: dict[_Link, list[bytes]] = {}
        self._flusher: asyncio.Task | None = None
        self._closed = False
        self._failures = Throttled(log)

    @property
    def names(self) -> set[bytes]:
        return set(self._link_of)

    # ---------------------------------------------------------------- routing

    def _link_for(self, name: bytes) -> _Link:
        if self.shards:
            # Independent instances: the owner of a name never changes while the process runs.
            index = self.client.shard_index(name)
            key = self.client.names[index]
            shard = self.client.shards[index]

            def make() -> _Link:
                return _Link(key, shard, owned=False)
        elif not self.cluster:
            key, make = "", lambda: _Link("", self.client, owned=False)
        else:
            node = self.client.get_node_from_key(name)
            key = node.name

            def make() -> _Link:
                # A plain client for this primary, with the cluster's connection settings.
                pool = aioredis.ConnectionPool(connection_class=node.connection_class,
                                               **node.connection_kwargs)
                return _Link(node.name, aioredis.Redis(connection_pool=pool), owned=True)
        link = self._links.get(key)
        if link is None:
            link = self._links[key] = make()
        return link

    def _route(self, names: list[bytes]) -> dict[_Link, list[bytes]]:
        """Assign ``names`` to the link of their current owner; returns the new assignments."""
        moved: dict[_Link, list[bytes]] = defaultdict(list)
        for name in names:
            link = self._link_for(name)
            old = self._link_of.get(name)
            if old is link:
                continue
            if old is not None:
                old.names.discard(name)
            link.names.add(name)
            self._link_of[name] = link
            moved[link].append(name)
        return moved

    # ---------------------------------------------------------------- subscribe

    async def subscribe(self, names: list[bytes]) -> None:
        """Subscribe ``names``; return once Redis confirmed each (or raise TimeoutError: they
        stay subscribed and each gets ``on_resync`` when it is confirmed).

        Names asked for during one loop turn, by any number of callers, go to Redis together:
        one (S)SUBSCRIBE per connection (and slot) for the whole turn, sent by one task."""
        if self._closed:
            raise RuntimeError("subscriptions are closed")
        if self.cluster:
            await self.client.initialize()
        loop = asyncio.get_running_loop()
        waits: list[tuple[bytes, asyncio.Future]] = []
        for name in dict.fromkeys(names):
            if name in self._link_of and name not in self._waiters:
                continue  # already confirmed
            future = loop.create_future()
            self._waiters.setdefault(name, []).append(future)
            waits.append((name, future))
        if not waits:
            return
        fresh = [n for n, _ in waits if n not in self._link_of]
        try:
            # Routing raises while a cluster slot has no owner (mid-failover): then the
            # waiters are withdrawn below and the caller sees the error.
            for link, assigned in self._route(fresh).items():
                self._queue(link, assigned)
            if len(waits) == 1:
                await asyncio.wait_for(waits[0][1], self.subscribe_timeout)
            else:
                await asyncio.wait_for(asyncio.gather(*(f for _, f in waits)), self.subscribe_timeout)
        finally:
            for name, future in waits:
                pending = self._waiters.get(name)
                if pending and future in pending:
                    pending.remove(future)
                    if not pending:
                        del self._waiters[name]

    def _queue(self, link: _Link, names: list[bytes]) -> None:
        """Send ``names`` on ``link`` with every other name queued during this loop turn."""
        self._queued.setdefault(link, []).extend(names)
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush(), name="pubsub subscribe")

    async def _flush(self) -> None:
        """Send what was queued (runs one loop turn after the first name was queued). What is
        queued while it sends goes in the next round."""
        try:
            while self._queued and not self._closed:
                queued, self._queued = self._queued, {}
                sends = []
                for link, names in queued.items():
                    # A name unsubscribed (or moved to another link) since it was queued stays out.
                    names = [n for n in dict.fromkeys(names) if self._link_of.get(n) is link]
                    if names:
                        sends.append(self._send(link, names))
                if len(sends) == 1:
                    await sends[0]
                elif sends:
                    await asyncio.gather(*sends)
        finally:
            self._flusher = None

    async def _send(self, link: _Link, names: list[bytes]) -> None:
        """Subscribe ``names`` on ``link``'s connection (made if needed). A failure leaves the
        link's reader to rebuild the connection with every name."""
        async with link.lock:
            try:
                if link.pubsub is None:
                    link.pubsub = link.client.pubsub()
                await self._subscribe_on(link.pubsub, names)
            except Exception as exc:
                self._failures.warning("pub/sub: subscribing on %s failed, will retry: %s", link.key or "redis", exc)
                failed = link.pubsub
                await self._drop(link)
                if link.reader is not None and failed is not None and link.reading is failed:
                    # The reader may wait on the dropped connection until its ping interval
                    # (redis-py's own retries can even reconnect it): start a new one now.
                    link.reader.cancel()
                    link.reader = None
            if link.reader is None and not self._closed:
                link.reader = asyncio.get_running_loop().create_task(self._read_loop(link))

    async def _subscribe_on(self, pubsub: aioredis.client.PubSub, names: list[bytes]) -> None:
        if not self.sharded:
            for start in range(0, len(names), BATCH):
                await pubsub.subscribe(*names[start:start + BATCH])
            return
        # One SSUBSCRIBE may only name channels of one slot.
        by_slot: dict[int, list[bytes]] = defaultdict(list)
        for name in names:
            by_slot[key_slot(name)].append(name)
        for group in by_slot.values():
            for start in range(0, len(group), BATCH):
                await pubsub.ssubscribe(*group[start:start + BATCH])

    async def _unsubscribe_on(self, pubsub: aioredis.client.PubSub, names: list[bytes]) -> None:
        for start in range(0, len(names), BATCH):
            batch = names[start:start + BATCH]
            if self.sharded:
                for name in batch:  # one slot per command
                    await pubsub.sunsubscribe(name)
            else:
                await pubsub.unsubscribe(*batch)

    async def unsubscribe(self, names: list[bytes]) -> None:
        by_link: dict[_Link, list[bytes]] = defaultdict(list)
        for name in names:
            link = self._link_of.pop(name, None)
            if link is None:
                continue
            link.names.discard(name)
            by_link[link].append(name)
            # A subscribe() still waiting for this name returns: it is no longer wanted.
            for future in self._waiters.pop(name, []):
                if not future.done():
                    future.set_result(None)
        for link, gone in by_link.items():
            async with link.lock:
                if link.pubsub is None:
                    continue
                try:
                    await self._unsubscribe_on(link.pubsub, gone)
                except Exception as exc:
                    # Harmless: a new connection subscribes only wanted names, and a message
                    # on an unwanted one is dropped.
                    self._failures.warning("pub/sub: unsubscribing failed: %s", exc)

    # ---------------------------------------------------------------- connections

    async def _drop(self, link: _Link) -> None:
        pubsub, link.pubsub = link.pubsub, None
        if pubsub is not None:
            try:
                await pubsub.aclose()
            except Exception:
                pass

    async def _recover(self, link: _Link, failed: aioredis.client.PubSub | None) -> bool:
        """Replace ``link``'s connection ``failed`` and subscribe its names again, retrying
        with backoff. In a cluster the topology is refreshed first and names whose slot now
        belongs to another primary move to that primary's link. Returns False, ending the
        reader, when the link has nothing left to carry."""
        delay = 0.05
        while not self._closed:
            moved: dict[_Link, list[bytes]] = {}
            if self.cluster:
                try:
                    await self.client.nodes_manager.initialize()
                    moved = self._route(list(link.names))
                except Exception as exc:
                    self._failures.warning("pub/sub: cluster topology unavailable, retrying: %s", exc)
            for other, names in moved.items():
                await self._send(other, names)
            async with link.lock:
                if link.pubsub is not failed:
                    return True  # already replaced by someone else
                await self._drop(link)
                if not link.names:
                    link.reader = None
                    if link.owned and self._links.get(link.key) is link:
                        del self._links[link.key]
                        await link.client.aclose()
                    return False
                link.pubsub = link.client.pubsub()
                try:
                    await self._subscribe_on(link.pubsub, list(link.names))
                    return True
                except Exception as exc:
                    self._failures.warning("pub/sub: %s unavailable, retrying: %s", link.key or "redis", exc)
                    failed = link.pubsub
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        return False

    async def _read_loop(self, link: _Link) -> None:
        awaiting_pong = False
        while not self._closed:
            pubsub = link.pubsub
            if pubsub is None:
                if not await self._recover(link, None):
                    return
                continue
            try:
                link.reading = pubsub
                try:
                    message = await pubsub.get_message(timeout=self.ping_interval)
                finally:
                    link.reading = None
                if message is None:
                    if awaiting_pong:
                        raise ConnectionError("no answer to PING on the pub/sub connection")
                    awaiting_pong = True
                    await pubsub.ping()
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failures.warning("pub/sub: connection to %s lost, resubscribing: %s", link.key or "redis", exc)
                awaiting_pong = False
                if not await self._recover(link, pubsub):
                    return
                continue
            awaiting_pong = False
            await self._handle(link, pubsub, message)

    async def _handle(self, link: _Link, pubsub: aioredis.client.PubSub, message: dict) -> None:
        kind = message.get("type")
        name = message.get("channel")
        if kind in ("message", "smessage"):
            if name in self._link_of:
                self.on_message(name, message.get("data"))
        elif kind in ("subscribe", "ssubscribe"):
            if self._link_of.get(name) is not link:
                # Subscribed again by redis-py's own reconnect after we let go of it here.
                try:
                    await self._unsubscribe_on(pubsub, [name])
                except Exception:
                    pass
                return
            waiters = self._waiters.pop(name, None)
            if waiters:
                for future in waiters:
                    if not future.done():
                        future.set_result(None)
            else:
                self.on_resync(name)
        elif kind == "sunsubscribe" and self._link_of.get(name) is link:
            # Redis dropped a shard channel we still want: its slot moved to another node.
            # Rebuilding this connection refreshes the topology and moves the channel.
            async with link.lock:
                await self._drop(link)

    async def close(self) -> None:
        self._closed = True
        flusher, self._flusher = self._flusher, None
        self._queued.clear()
        if flusher is not None:
            flusher.cancel()
            try:
                await flusher
            except asyncio.CancelledError:
                pass
        for link in list(self._links.values()):
            if link.reader is not None:
                link.reader.cancel()
                try:
                    await link.reader
                except asyncio.CancelledError:
                    pass
            async with link.lock:
                await self._drop(link)
            if link.owned:
                await link.client.aclose()
        self._links.clear()
        for futures in self._waiters.values():
            for future in futures:
                if not future.done():
                    future.cancel()
        self._waiters.clear()
