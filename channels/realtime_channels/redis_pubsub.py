"""Channel subscriptions over Redis pub/sub, kept alive across lost connections and failovers.

One pub/sub connection per Redis server: a single one for a standalone server, one per primary
in a Redis Cluster, where each channel is SSUBSCRIBEd on the primary that owns its slot.

:meth:`Subscriptions.subscribe` returns once Redis has confirmed every channel, so a history
read after it misses nothing. When a connection drops (or a cluster moves a slot, or a primary
fails over), its channels are subscribed again — on the new owner, after a topology refresh, in
a cluster — and each confirmation nobody is waiting for means notifications may have been
missed: the owner's ``on_resync(name)`` is called so it can read that channel's history.

Each connection is a plain redis-py ``Connection`` with the client's settings, read by one
task with ``Connection.read_response`` (hiredis parses when installed): a notification costs
one ``read_response`` call, and every reply already received is handled before the socket is
awaited again. redis-py's ``PubSub`` is not used: its per-message path (retry wrapper, health checks,
message dicts) cost several times more, and its own reconnect-and-resubscribe raced ours.
Here a connection is never reconnected in place: a lost one is replaced, by one code path.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict
from typing import Any, Callable

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis._parsers.hiredis import NOT_ENOUGH_DATA as NO_REPLY
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError

from .sharded_redis import ShardedRedis

log = logging.getLogger("realtime_channels.redis_pubsub")

# Channel names per SUBSCRIBE command: one command per batch keeps each reply small.
BATCH = 500
# Seconds a write to a pub/sub connection may wait for room in its socket buffer (Redis not
# reading it); then the connection is dropped and replaced.
WRITE_TIMEOUT = 10.0
# Seconds between two subscription writes, at least: under load (a thousand connects a
# second), names wait up to this long and share a write; a connect's reply waits with them.
WRITE_PACE = 0.005


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

    __slots__ = ("key", "client", "owned", "names", "conn", "count", "reader", "reading", "stalled",
                 "heard", "pinged", "timer", "lock", "leaving")

    def __init__(self, key: str, client: aioredis.Redis, owned: bool) -> None:
        self.key = key            # "" for a standalone server, else the node's name
        self.client = client      # its pool lends the connection
        self.owned = owned        # a client made for this link, closed with it
        self.names: set[bytes] = set()
        self.conn: AbstractConnection | None = None
        # Channels the connection has subscribed, as Redis last counted them: a confirmation
        # that does not raise the count repeats one (no gap on this connection).
        self.count = 0
        self.reader: asyncio.Task | None = None
        self.reading: AbstractConnection | None = None   # the connection the reader waits on, while it waits
        self.stalled: AbstractConnection | None = None   # the connection the reader was cancelled off
        self.heard = True         # a reply arrived since the last tick
        self.pinged = False       # a PING went out at the last tick
        self.timer: asyncio.TimerHandle | None = None
        self.lock = asyncio.Lock()  # one writer at a time; held while the connection is replaced
        # (S)UNSUBSCRIBEs sent on this connection whose replies have not come back, by name: such
        # a reply for a name wanted again meanwhile is ours, not Redis moving a slot.
        self.leaving: dict[bytes, int] = {}


class Subscriptions:
    """Subscribed notification names and the connections that carry them.

    :param client: ``redis.asyncio.Redis``, ``RedisCluster`` or :class:`~.sharded_redis.ShardedRedis`
        (``decode_responses=False``); with several instances each name is subscribed on the
        instance its hash tag routes to, one connection per instance.
    :param sharded: SSUBSCRIBE instead of SUBSCRIBE (required for a cluster).
    :param on_message: called with (name, payload) for each message on a subscribed name, in
        the order Redis sent them.
    :param on_resync: called with a name whose subscription was re-established without
        anyone waiting for it: messages in between may be lost.
    :param subscribe_timeout: seconds :meth:`subscribe` waits for confirmations.
    :param ping_interval: a connection that carried nothing for one to two intervals is
        pinged; one still silent an interval later counts as dead and is replaced.
    :param write_pace: at least this many seconds between two subscription writes: names asked
        for sooner after the last write wait for the rest of it and go together.
    :param shared: whether a name carries the messages of several owners' channels (a node
        route, see .routes): a new subscription of it that a :meth:`subscribe` waited for still
        signals ``on_resync``, for the channels of the others already following it.
    """

    def __init__(self, client: aioredis.Redis | RedisCluster | ShardedRedis, *, sharded: bool,
                 on_message: Callable[[bytes, bytes], None], on_resync: Callable[[bytes], None],
                 subscribe_timeout: float = 10.0, ping_interval: float = 15.0,
                 write_pace: float = WRITE_PACE, shared: Callable[[bytes], bool] = lambda name: False) -> None:
        self.client = client
        self.shared = shared
        self.cluster = isinstance(client, RedisCluster)
        self.shards = isinstance(client, ShardedRedis)
        if self.cluster and not sharded:
            raise ValueError("a Redis Cluster needs sharded=True (SSUBSCRIBE on each channel's shard)")
        self.sharded = sharded
        # The reply kinds of this mode: (s)message, (s)subscribe, (s)unsubscribe.
        self._kinds = (b"smessage", b"ssubscribe", b"sunsubscribe") if sharded else (
            b"message", b"subscribe", b"unsubscribe")
        self.on_message = on_message
        self.on_resync = on_resync
        self.subscribe_timeout = subscribe_timeout
        self.ping_interval = ping_interval
        self.write_pace = write_pace
        self._last_write = -write_pace
        self._links: dict[str, _Link] = {}
        self._link_of: dict[bytes, _Link] = {}
        self._waiters: dict[bytes, list[asyncio.Future]] = {}
        # Names of subscribe_new not confirmed yet: their confirmation is no resync.
        self._unconfirmed: set[bytes] = set()
        # Names to subscribe, per link, gathered until the next write; the task sending them.
        self._queued: dict[_Link, list[bytes]] = {}
        self._flusher: asyncio.Task | None = None
        # Callers of written(), each with its own future (one shared future would be cancelled
        # for all by one caller's cancellation): resolved once the names queued before are.
        self._writers: list[asyncio.Future] = []
        # PINGs and busy links' subscriptions being sent (the loop keeps weak references)
        self._tasks: set[asyncio.Task] = set()
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

        Names asked for during one loop turn (or one ``write_pace``, under load), by any number
        of callers, go to Redis together: one (S)SUBSCRIBE per connection (and slot), sent by
        one task."""
        if self._closed:
            raise RuntimeError("subscriptions are closed")
        if self.cluster:
            await self.client.initialize()
        loop = asyncio.get_running_loop()
        waits: list[tuple[bytes, asyncio.Future]] = []
        unconfirmed = self._unconfirmed
        for name in dict.fromkeys(names):
            if name in self._link_of and name not in self._waiters and name not in unconfirmed:
                continue  # already confirmed
            # (A name of subscribe_new not confirmed yet, a route's, say, is waited for too:
            # what this caller reads next must not miss what Redis announces before.)
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
                if future.cancelled() or not future.done():
                    # Given up on (timed out): its confirmation, when it comes, is a resync,
                    # also for a name subscribe_new asked for too.
                    unconfirmed.discard(name)
                pending = self._waiters.get(name)
                if pending and future in pending:
                    pending.remove(future)
                    if not pending:
                        del self._waiters[name]

    def subscribe_new(self, names: list[bytes]) -> bool:
        """Subscribe ``names``, which nobody can have published to yet, without waiting: they
        go to Redis with the other names of this loop turn or ``write_pace`` (:meth:`written`
        says when they are written), and their confirmation triggers no ``on_resync``, unless
        their connection is being made or replaced when they are sent (then, as any name,
        they are resynced: a publication may come before the subscription). Returns False,
        doing nothing, while a cluster's topology is unknown (:meth:`subscribe` loads it)."""
        if self._closed:
            raise RuntimeError("subscriptions are closed")
        if self.cluster and self.client._initialize:  # redis-py: True until initialize() ran
            return False
        fresh = [n for n in names if n not in self._link_of]
        if fresh:
            self._unconfirmed.update(fresh)
            for link, assigned in self._route(fresh).items():
                self._queue(link, assigned)
        return True

    def written(self) -> asyncio.Future | None:
        """None when no name waits for the sending task; else a future resolved once the
        names queued so far are written on connections that were up (not necessarily
        confirmed), or handed to a connection being made (then they get a resync)."""
        if self._flusher is None:
            return None
        future = asyncio.get_running_loop().create_future()
        self._writers.append(future)
        return future

    def confirmed(self, name: bytes) -> bool:
        """False for a name Redis has not confirmed yet: one of :meth:`subscribe_new`, or one a
        :meth:`subscribe` waits for (a route another channel asked for first)."""
        return name not in self._unconfirmed and name not in self._waiters

    def _queue(self, link: _Link, names: list[bytes]) -> None:
        """Send ``names`` on ``link`` with every other name queued until the next write."""
        self._queued.setdefault(link, []).extend(names)
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush(), name="pubsub subscribe")

    async def _flush(self) -> None:
        """Send what was queued (runs one loop turn after the first name was queued, or up to
        ``write_pace`` later). What is queued while it sends goes in the next round."""
        loop = asyncio.get_running_loop()
        writers: list[asyncio.Future] = []
        try:
            while self._queued and not self._closed:
                # Every write wakes Redis, which on a core shared with this server preempts
                # it: at a thousand connects a second, each with its own SUBSCRIBE, that cost
                # more than the subscriptions. Under load, names wait for a pace and share a
                # write; alone, they are written at once.
                pause = self._last_write + self.write_pace - loop.time()
                if pause > 0:
                    await asyncio.sleep(pause)
                queued, self._queued = self._queued, {}
                writers, self._writers = self._writers, []  # later callers wait for the next round
                # A link with its connection up and free writes now, one after the other; then
                # the writers are told. A link whose connection is being made (or busy) gets a
                # task of its own, so that nobody waits for it: its names go out with the new
                # connection, perhaps after a publication, so subscribe_new's lose their
                # exemption from the resync.
                for link, names in queued.items():
                    if link.conn is not None and not link.lock.locked():
                        await self._send(link, names)
                        self._last_write = loop.time()
                    else:
                        self._unconfirmed.difference_update(names)
                        task = loop.create_task(self._send(link, names), name="pubsub subscribe")
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)
                _release(writers)
        finally:
            self._flusher = None
            # Closed, cancelled or failed: nobody waits for a write that is not coming.
            _release(writers)
            _release(self._writers)

    async def _send(self, link: _Link, names: list[bytes]) -> None:
        """Subscribe ``names`` on ``link``'s connection; without one, make it (with every name
        of the link). A failure drops the connection: the link's reader makes a new one."""
        async with link.lock:
            # A name unsubscribed (or moved to another link) since it was queued stays out.
            names = [n for n in dict.fromkeys(names) if self._link_of.get(n) is link]
            try:
                if link.conn is None:
                    if link.names:
                        await self._connect(link)
                elif names:
                    await _write(link.conn, self._commands(self._kinds[1], names))
            except Exception as exc:
                self._failures.warning("pub/sub: subscribing on %s failed, will retry: %s", link.key or "redis", exc)
                await self._drop(link)
        if (link.reader is None or link.reader.done()) and not self._closed:
            link.reader = asyncio.get_running_loop().create_task(self._read_loop(link))

    def _commands(self, kind: bytes, names: list[bytes]) -> list[tuple[bytes, ...]]:
        """(S)(UN)SUBSCRIBE commands for ``names``: at most BATCH names each, and with
        SSUBSCRIBE/SUNSUBSCRIBE one slot each (Redis refuses a command spanning slots)."""
        groups: Any = [names]
        if self.sharded:
            by_slot: dict[int, list[bytes]] = defaultdict(list)
            for name in names:
                by_slot[key_slot(name)].append(name)
            groups = by_slot.values()
        return [(kind.upper(), *group[start:start + BATCH])
                for group in groups for start in range(0, len(group), BATCH)]

    async def unsubscribe(self, names: list[bytes]) -> None:
        by_link: dict[_Link, list[bytes]] = defaultdict(list)
        for name in names:
            link = self._link_of.pop(name, None)
            self._unconfirmed.discard(name)
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
                if link.conn is None:
                    continue
                for name in gone:  # counted before the write: its reply may be read during it
                    link.leaving[name] = link.leaving.get(name, 0) + 1
                try:
                    await _write(link.conn, self._commands(self._kinds[2], gone))
                except Exception as exc:
                    # Harmless: a new connection subscribes only wanted names, and a message
                    # on an unwanted one is dropped.
                    self._failures.warning("pub/sub: unsubscribing failed: %s", exc)

    # ---------------------------------------------------------------- connections

    async def _connect(self, link: _Link) -> None:
        """A new connection for ``link``, with every name of the link subscribed on it (called
        with the link's lock held).

        Made with the settings of the client's pool but not lent by it (held for good, it
        would only take a command's place there), and speaking RESP2: notifications come as
        plain replies, not as RESP3 pushes, which redis-py hands to its push handler (a
        ``str()`` of each for a debug log line) before returning them. No health check
        interval: the tick checks, and read_response would otherwise read the clock per reply."""
        pool = link.client.connection_pool
        # No socket_timeout: redis-py would write through asyncio.wait_for, a Task, so one
        # loop turn later (a CONNECT reply waits for its subscription's write); _write bounds
        # the write itself.
        kwargs = {**pool.connection_kwargs, "protocol": 2, "health_check_interval": 0, "socket_timeout": None}
        # Maintenance notifications are RESP3 pushes, which this RESP2 connection never gets
        # (and redis-py refuses to configure them at all with its pure-Python RESP2 parser).
        for name in ("maint_notifications_config", "maint_notifications_pool_handler",
                     "oss_cluster_maint_notifications_handler"):
            kwargs.pop(name, None)
        conn = pool.connection_class(**kwargs)
        # Every name of the link is subscribed again here, and confirmed fresh: a name of
        # subscribe_new whose confirmation was lost with the old connection is resynced too.
        self._unconfirmed.difference_update(link.names)
        try:
            await conn.connect()
            await _write(conn, self._commands(self._kinds[1], list(link.names)))
        except BaseException:
            await _close(conn)
            raise
        link.conn, link.count, link.heard, link.pinged = conn, 0, True, False
        link.leaving.clear()  # replies to the old connection's UNSUBSCRIBEs will not come

    async def _drop(self, link: _Link) -> None:
        """Close ``link``'s connection (called with the link's lock held, or at close). A
        reader waiting on it is cancelled off it, to go on with the next connection at once."""
        conn, link.conn = link.conn, None
        if conn is None:
            return
        if link.reading is conn:
            link.stalled = conn
            link.reader.cancel()  # type: ignore[union-attr]
        await _close(conn)

    async def _recover(self, link: _Link, failed: AbstractConnection | None) -> bool:
        """Replace ``link``'s connection ``failed`` (None: it has none) and subscribe its names
        again, retrying with backoff. In a cluster the topology is refreshed first and names
        whose slot now belongs to another primary move to that primary's link. Returns False,
        ending the reader, when the link has nothing left to carry."""
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
                if link.conn is not failed:
                    return True  # already replaced by someone else
                await self._drop(link)
                if not link.names:
                    link.reader = None
                    if link.owned and self._links.get(link.key) is link:
                        del self._links[link.key]
                        await link.client.aclose()
                    return False
                try:
                    await self._connect(link)
                    return True
                except Exception as exc:
                    self._failures.warning("pub/sub: %s unavailable, retrying: %s", link.key or "redis", exc)
                    failed = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        return False

    async def _read_loop(self, link: _Link) -> None:
        """The link's only reader: every reply, in order, until the subscriptions close."""
        link.timer = asyncio.get_running_loop().call_later(self.ping_interval, self._tick, link)
        message, subscribed, unsubscribed = self._kinds
        link_of, on_message, unconfirmed = self._link_of, self.on_message, self._unconfirmed
        failed: AbstractConnection | None = None
        buffered, parsing = None, None
        try:
            while not self._closed:
                conn = link.conn
                if conn is None or conn is failed:
                    if not await self._recover(link, conn):
                        return
                    failed = None
                    continue
                if parsing is not conn:
                    buffered, parsing = buffered_replies(conn), conn
                link.reading = conn
                try:
                    reply = buffered() if buffered is not None else NO_REPLY
                    if reply is NO_REPLY:
                        # Awaits the socket only when no reply is buffered. No timeout:
                        # silence is the tick's business.
                        reply = await conn.read_response(timeout=math.inf, disconnect_on_error=False,
                                                         push_request=True)
                    elif isinstance(reply, Exception):
                        raise reply
                except asyncio.CancelledError:
                    # Cancelled off its connection (dropped, or silent): carry on with the next
                    # one, unless someone else cancels too.
                    if link.stalled is not conn or asyncio.current_task().uncancel():  # type: ignore[union-attr]
                        raise
                    link.stalled = None
                    failed = conn
                    continue
                except Exception as exc:
                    self._failures.warning("pub/sub: connection to %s lost, resubscribing: %s", link.key or "redis", exc)
                    failed = conn
                    continue
                finally:
                    link.reading = None
                link.heard = True
                if type(reply) is not list or len(reply) != 3:
                    continue  # a PONG
                kind, name = reply[0], reply[1]
                if kind == message:
                    if name in link_of:
                        on_message(name, reply[2])
                elif kind == subscribed:
                    fresh = reply[2] > link.count
                    link.count = reply[2]
                    if link_of.get(name) is link:
                        waiters = self._waiters.pop(name, None)
                        new = name in unconfirmed
                        if new:
                            unconfirmed.discard(name)  # subscribe_new's: nothing to resync
                        if waiters:
                            for future in waiters:
                                if not future.done():
                                    future.set_result(None)
                        if fresh and not new and (not waiters or self.shared(name)):
                            self.on_resync(name)
                elif kind == unsubscribed:
                    link.count = reply[2]
                    leaving = link.leaving.get(name)
                    if leaving:  # the reply to our own UNSUBSCRIBE (the name may be wanted again since)
                        if leaving == 1:
                            del link.leaving[name]
                        else:
                            link.leaving[name] = leaving - 1
                    elif self.sharded and link_of.get(name) is link:
                        # Redis dropped a shard channel we still want: its slot moved to another
                        # node. Rebuilding this connection refreshes the topology and moves it.
                        failed = conn
        finally:
            link.timer.cancel()

    def _tick(self, link: _Link) -> None:
        """Every ping_interval while the link's reader runs: a connection that carried nothing
        since the last tick is pinged; one still silent at the next tick is given up (its
        reader is cancelled off it and replaces it)."""
        link.timer = asyncio.get_running_loop().call_later(self.ping_interval, self._tick, link)
        conn = link.conn
        if conn is None or link.reading is not conn:
            return  # being replaced, or the reader is busy: nothing to judge
        if link.heard:
            link.heard = link.pinged = False
        elif not link.pinged:
            link.pinged = True
            task = asyncio.get_running_loop().create_task(self._ping(link, conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._failures.warning("pub/sub: no answer to PING from %s, resubscribing", link.key or "redis")
            link.stalled = conn
            link.reader.cancel()  # type: ignore[union-attr]

    async def _ping(self, link: _Link, conn: AbstractConnection) -> None:
        async with link.lock:
            if link.conn is conn:
                try:
                    await _write(conn, [(b"PING",)])
                except Exception:
                    pass  # the reader finds the connection dead, or the next tick does

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
        _release(self._writers)
        for task in list(self._tasks):
            task.cancel()
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


def _release(writers: list[asyncio.Future]) -> None:
    """Resolve the futures of :meth:`Subscriptions.written` not resolved (nor cancelled) yet."""
    for future in writers:
        if not future.done():
            future.set_result(None)
    writers.clear()


def buffered_replies(conn: AbstractConnection) -> Callable[[], Any] | None:
    """The next reply already received on ``conn`` (:data:`NO_REPLY` when none is complete), parsed by
    hiredis without redis-py's layers around it (five Python calls a reply, for every
    notification and subscription confirmation); None when ``conn`` does not parse with
    hiredis (then Connection.read_response is the way). A reply error comes back as an
    exception instance. redis-py's private ``_parser._reader``, pinned by the lock; a test
    (tests/test_redis_pubsub_reader.py) names it if it goes away."""
    reader = getattr(getattr(conn, "_parser", None), "_reader", None)
    gets = getattr(reader, "gets", None)
    return gets if callable(gets) else None


async def _write(conn: AbstractConnection, commands: list[tuple[bytes, ...]]) -> None:
    """Send ``commands`` in one write. A connection closed since is not written to: redis-py
    would reconnect it in place, without the subscriptions it carried."""
    if not conn.is_connected:
        raise RedisConnectionError("the pub/sub connection was closed")
    # Writes at once; only a full socket buffer (Redis not reading) waits, at most this long.
    async with asyncio.timeout(WRITE_TIMEOUT):
        await conn.send_packed_command(conn.pack_commands(commands), check_health=False)


async def _close(conn: AbstractConnection) -> None:
    try:
        await conn.disconnect(nowait=True)
    except Exception:
        pass  # closing anyway
