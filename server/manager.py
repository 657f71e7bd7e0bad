"""RealtimeManager: python-socketio's client manager, delivering durable namespaces through channels.

The path of one durable event (a /chat message, say):

1. :meth:`RealtimeManager.publish` writes it once to its room's channel
   (:mod:`server.core.channel_log`: one atomic step — idempotency, append, trim, notify) and
   returns its position ``{offset, epoch}``.
2. Every node whose sockets are in that room is subscribed to the channel and hears of the
   publication (:meth:`_on_publication`). It delivers each channel in offset order: a
   publication after a gap first reads the missing ones from the channel's history.
3. :meth:`_deliver` builds the packet once — the event's arguments, then the offset string
   the JS client keeps for recovery — and writes it to each local member.

Recovery (:meth:`recover`) reads only the channels the session was in, from the positions
:func:`server.core.positions.resolve` derives from the client's offset string.

Volatile events and events of other namespaces go straight to local sockets and, with Redis,
to the other nodes over the :class:`~server.bus.Bus`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Iterable, Mapping

from engineio import packet as eio_packet
from socketio import packet as sio_packet

from realtime_channels.channel_log import EMPTY, ChannelLog, MemoryChannelLog, OnPublication, OnResync, Publication, PublishResult, StreamPosition
from realtime_channels.envelope import Envelope, channel_name, channel_tag, decode_envelope, encode_envelope, offset_token, split_channel
from realtime_channels.routes import route_of
from .adapter import ManagerAdapter
from .core.positions import ChannelCursor, Deliveries, Position, SocketPositions, resolve
from .bus import Bus
from .codec import write_frames
from .engine_socket import DIRECT_WRITE_LIMIT, text_frame
from .metrics import Metrics
from .send_queue import packet_size

log = logging.getLogger("server.delivery")

# A volatile packet is dropped when the socket already has this many packets waiting:
# a slow client skips frames instead of building a backlog.
VOLATILE_QUEUE_LIMIT = 8
# Publications read per history call (gap reads, recovery).
PAGE = 1000
# Unopened channels whose positions one read asks for, after a resync of the route.
PROBE_BATCH = 1000
# Seconds after a channel's last local member left before the node unsubscribes (a burst of
# disconnects is one unsubscribe; a socket that rejoins at once keeps the subscription).
REAP_DELAY = 0.5

ChannelLogFactory = Callable[[OnPublication, OnResync], ChannelLog]


def websocket_frame(packets: list[eio_packet.Packet]) -> bytes | None:
    """The WebSocket frame of a single text Engine.IO packet, built once per broadcast;
    None for anything else (binary attachments)."""
    if len(packets) != 1 or not isinstance(packets[0].data, str):
        return None
    return text_frame(packets[0].encode())


def _size(packets: list[eio_packet.Packet]) -> int:
    return sum(map(packet_size, packets))


def run_now(coro: Any) -> Any:
    """Run ``coro``, one that never suspends (the in-process channel log's subscribe,
    position, unsubscribe), to its end here and return its result: no Task, no loop turn."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("an in-process channel log call suspended")


def normalize_args(data: Any) -> list[Any]:
    """python-socketio convention: a tuple is several arguments, None is none, else one."""
    if isinstance(data, tuple):
        return list(data)
    if isinstance(data, list) and getattr(data, "_is_args", False):
        return list(data)
    return [] if data is None else [data]


class RealtimeManager(ManagerAdapter):
    """Client manager that delivers durable namespaces through per-room channels.

    :param channel_log: builds the channel log, given the two callbacks it must call (this
        manager's): so the log is made here, complete, and never re-wired afterwards.
    :param durable_namespaces: namespaces whose events are published to channels, carry
        offsets and are recovered.
    :param metrics: counters to update.
    :param trail_length: publications per channel remembered for resolving a client's offset
        string (see :mod:`server.core.positions`).
    :param session_trail: trail entries saved with a session when its socket ends.
    :param bus: carries emits of namespaces without channels to the other nodes; None without Redis.
    :param route: this node's tag (its sockets' ids and its guests' user rooms start with it,
        see ``realtime_channels.routes``): with a shared log, :meth:`start` holds its route, and
        those channels are followed from their first publication on, not from their join.
    """

    def __init__(self, channel_log: ChannelLogFactory, durable_namespaces: Iterable[str], metrics: Metrics,
                 trail_length: int = 1024, session_trail: int = 2048, bus: Bus | None = None,
                 route: str | None = None) -> None:
        super().__init__()
        self.log = channel_log(self._on_publication, self._on_resync)
        # The in-process log (embedded mode) answers subscribe/position at once: a channel is
        # opened inline, without the Task (and the loop hand-offs) a Redis subscription needs.
        self._inline = isinstance(self.log, MemoryChannelLog)
        self.durable = frozenset(durable_namespaces)
        self.metrics = metrics
        self.session_trail = session_trail
        self.deliveries = Deliveries(trail_length)
        self.bus = bus
        self.follower_healthy = True
        # (namespace, sid) -> what the socket surely received, for the durable namespaces.
        self.positions: dict[tuple[str, str], SocketPositions] = {}
        # Channels being opened (channel -> the task opening it with others of its loop turn).
        self._opening: dict[str, asyncio.Task] = {}
        # Channels to open next (channel -> fresh) and the task that will open them.
        self._queued_opens: dict[str, bool] = {}
        self._open_task: asyncio.Task | None = None
        self._closing: dict[str, asyncio.Task] = {}
        self._catching_up: dict[str, asyncio.Task] = {}
        # Highest offset announced for a channel while a gap read was running.
        self._announced: dict[str, int] = {}
        # Channels announced in another epoch while a gap read was running: read once more.
        self._recheck: set[str] = set()
        # Epoch renewals under way (channel -> task), after a failover lost writes.
        self._renewing: dict[str, asyncio.Task] = {}
        # Live publications held back while a recovering socket is replayed its history.
        self._recovering: dict[tuple[str, str], list[tuple[str, int, list[eio_packet.Packet]]]] = {}
        self._reap_timer: asyncio.TimerHandle | None = None
        self._reaping: asyncio.Task | None = None
        # The rooms of each socket. python-socketio finds them by scanning every room of the
        # namespace (get_rooms, basic_disconnect): O(rooms) per call, O(N^2) at 10k sockets.
        self._rooms_of: dict[tuple[str, str], set[Any]] = {}
        self.route = route
        # True once the log announces every channel of this node's route (start): from then
        # on a new socket's own room and a new guest's user room get no cursor at their join
        # (most never carry a publication) but wait in _unopened for their first one.
        self._route_held = False
        # Channels of this node's route with local members and no cursor yet, all of whose
        # members joined before anything was published there (origin: nowhere). Their first
        # notification, or a join that needs their cursor, opens them at the start.
        self._unopened: set[str] = set()
        self._route_task: asyncio.Task | None = None
        # The unopened channels a resync of the route asked to have read, and the task
        # reading their positions (see _probe_unopened).
        self._to_probe: set[str] = set()
        self._probing: asyncio.Task | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def unopened_count(self) -> int:
        """Channels of this node's route followed without a cursor yet (see :meth:`_hold`)."""
        return len(self._unopened)

    def start(self) -> None:
        """Hold this node's route (with a shared log and a ``route``), retried in a task until
        it is in effect; meanwhile channels are followed the way any other is."""
        if self._inline or self.route is None or self._route_task is not None:
            return
        self._route_task = asyncio.get_running_loop().create_task(self._hold_route(), name="hold route")

    async def _hold_route(self) -> None:
        backoff = 0.5
        while True:
            try:
                await self.log.subscribe_route(self.route, self._on_route_resync)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away at start-up: try again; sockets still connect
                log.warning("could not subscribe this node's route %s (retrying): %s", self.route, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            self._route_held = True
            return

    async def stop(self) -> None:
        if self._reap_timer is not None:
            self._reap_timer.cancel()
        tasks = [t for t in (self._route_task, self._reaping, self._probing, *self._catching_up.values(),
                             *self._renewing.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        await self.log.close()

    # ------------------------------------------------------------------ emit and publish

    async def route_emit(self, event: str, data: Any, namespace: str, room: Any = None, skip_sid: Any = None,
                         callback: Any = None, to: Any = None, volatile: bool = False, **kwargs: Any) -> None:
        namespace = namespace or "/"
        room = to or room
        args = normalize_args(data)
        skip = [s for s in (skip_sid if isinstance(skip_sid, list) else [skip_sid]) if s]
        rooms = None if room is None else ([room] if isinstance(room, str) else list(room))
        if callback is not None:
            # An event with an ack id carries no offset (as in Node): one recipient, not logged.
            return await self.library_emit(event, data, namespace, room=room, skip_sid=skip_sid,
                                           callback=callback)
        if namespace in self.durable and not volatile:
            if rooms is None or len(rooms) == 1:
                await self.publish(namespace, rooms[0] if rooms else None, event, args, skip)
            else:
                for target in dict.fromkeys(rooms):
                    await self.publish(namespace, target, event, args, skip, others=rooms)
            return
        if volatile and namespace in self.durable and args and isinstance(args[-1], str):
            # The JS client takes a trailing string as an offset; a volatile event must never
            # be mistaken for one, so its arguments end in null instead.
            args = args + [None]
        self.deliver_local(namespace, event, args, rooms, skip, volatile=volatile)
        if self.bus is not None and not kwargs.get("local_only"):
            await self.bus.publish_emit(namespace, event, args, rooms, skip, volatile)

    async def publish(self, namespace: str, room: str | None, event: str, args: list[Any],
                      skip: Iterable[str] = (), *, others: Iterable[str] = (), stamp: str | None = None,
                      idempotency_key: str | None = None) -> PublishResult:
        """Publish ``event(*args)`` to ``room`` of a durable namespace (None: every socket of
        it): one write; every node with members delivers it, in order, recoverably.

        :param skip: socket ids that must not receive it.
        :param others: every room of a multi-room emit, in order (a socket in several gets it once).
        :param stamp: a field of ``args[0]`` (a map) receivers set to the offset (``/chat``'s ``seq``).
        :param idempotency_key: a second publish with it within ``delivery.dedupe_ttl``
            publishes nothing and returns the first position.
        """
        envelope = Envelope(event, list(args), tuple(skip), tuple(others), stamp)
        channel = channel_name(namespace, room)
        if self._inline and channel not in self.deliveries.cursors and self._has_members(channel):
            # A room's channel is followed from its first publication on (see _join_inline).
            self._open_now(channel, False)
        cursor = self.deliveries.cursors.get(channel)
        before = cursor.position if cursor is not None else None
        # A channel subscribed unconfirmed (_open_new): this publication may reach Redis before
        # the subscription does, and its notification would never come. Read it back instead.
        unconfirmed = cursor is not None and not self._inline and not self.log.confirmed(channel)
        result = await self.log.publish(channel, encode_envelope(envelope), idempotency_key=idempotency_key)
        if unconfirmed:
            self._catch_up(channel)
        if not result.duplicate:
            self.metrics.events_logged.labels(namespace).inc()
            if (before is not None and before[1] and result.position.epoch == before[1]
                    and result.position.offset <= before[0] and self.deliveries.cursors.get(channel) is cursor):
                # An offset this node had delivered before this publish began was given to it:
                # a failover lost writes. Renew the epoch now, not when the notifications (whose
                # subscription the failover broke) come back, so that no client recovers from a
                # lost offset past the publications that reused it meanwhile.
                log.warning("channel %s: published at offset %d, already delivered here: a failover lost writes",
                            channel, result.position.offset)
                self._renew_epoch(channel, cursor)
        return result

    # ------------------------------------------------------------------ local delivery

    def _encode(self, namespace: str, event: str, args: list[Any]) -> list[eio_packet.Packet]:
        pkt = self.server.packet_class(sio_packet.EVENT, namespace=namespace, data=[event, *args])
        encoded = pkt.encode()
        if not isinstance(encoded, list):
            encoded = [encoded]
        return [eio_packet.Packet(eio_packet.MESSAGE, p) for p in encoded]

    def recipients(self, namespace: str, rooms: list[str] | None, skip: list[str]) -> list[tuple[str, str]]:
        ns = self.rooms.get(namespace)
        if not ns:
            return []
        if rooms is None:
            members = dict(ns.get(None, {}).items())
        else:
            members = {}
            for r in rooms:
                if r in ns:
                    members.update(ns[r].items())
        for s in skip:
            members.pop(s, None)
        return list(members.items())

    def deliver_local(self, namespace: str, event: str, args: list[Any], rooms: list[str] | None,
                      skip: list[str], volatile: bool = False) -> int:
        targets = self.recipients(namespace, rooms, skip)
        if not targets:
            return 0
        packets = self._encode(namespace, event, args)
        frame = websocket_frame(packets)
        for _, eio_sid in targets:
            self.write(eio_sid, packets, volatile, frame)
        self.metrics.deliveries.labels(namespace).inc(len(targets))
        self.metrics.bytes_out.inc(_size(packets) * len(targets))
        return len(targets)

    def packets_of(self, channel: str, tag: str, publication: Publication,
                   envelope: Envelope) -> list[eio_packet.Packet]:
        """The packets of a publication: its arguments, stamped, then its offset string."""
        namespace, _ = split_channel(channel)
        args = envelope.args
        if envelope.stamp is not None and args and isinstance(args[0], dict):
            args = [{**args[0], envelope.stamp: publication.offset}, *args[1:]]
        return self._encode(namespace, envelope.event, [*args, offset_token(tag, publication.offset)])

    def _targets(self, channel: str, envelope: Envelope) -> Mapping[str, str]:
        """The members of ``channel``'s room this publication goes to, ``sid`` -> ``eio_sid``:
        the room itself (a bidict) when it goes to all of them (the delivery does not change rooms
        while it walks them; what it hands the general path is a list of its own)."""
        namespace, room = split_channel(channel)
        ns = self.rooms.get(namespace)
        members = ns.get(room) if ns else None
        if not members:
            return {}
        skip = envelope.skip
        targets = {sid: eio_sid for sid, eio_sid in members.items() if sid not in skip} if skip else members
        if envelope.others and room in envelope.others:
            # Sent to several rooms: a socket gets it from the first of them it is in.
            before = envelope.others[:envelope.others.index(room)]
            earlier = [ns[r] for r in before if r in ns]
            if earlier:
                targets = {sid: eio_sid for sid, eio_sid in targets.items()
                           if not any(sid in m for m in earlier)}
        return targets

    def _deliver(self, channel: str, cursor: ChannelCursor, publication: Publication) -> None:
        self.deliveries.delivered(cursor, publication.offset, publication.time_ms)
        envelope = decode_envelope(publication.data)
        if envelope is None:
            log.warning("dropping malformed publication %s of %s", publication.offset, channel)
            return
        targets = self._targets(channel, envelope)
        if not targets:
            return
        namespace = split_channel(channel)[0]
        packets = self.packets_of(channel, cursor.tag, publication, envelope)
        frame = websocket_frame(packets)
        recovering = self._recovering
        if recovering:
            # A socket replaying its recovery gets this after the replay (see release).
            live = {}
            for sid, eio_sid in targets.items():
                held = recovering.get((namespace, sid))
                if held is None:
                    live[sid] = eio_sid
                else:
                    held.append((channel, publication.offset, packets))
            targets = live
        eio = self.server.eio
        backlog = eio.backlog
        if frame is not None and backlog is not None:
            # Most members take the frame straight on their socket, without a Python frame
            # each (server/_codec.pyx); the rest go the general way, one by one.
            rest = write_frames(targets, eio.sockets, frame, backlog.max_packets, backlog.max_bytes,
                                DIRECT_WRITE_LIMIT)
        else:
            rest = list(targets.items())
        delivered = len(targets)  # before the general path, which may cut members (and rooms)
        for _, eio_sid in rest:
            self.write(eio_sid, packets, False, frame)
        self.metrics.deliveries.labels(namespace).inc(delivered)
        self.metrics.bytes_out.inc(_size(packets) * delivered)

    def write(self, eio_sid: str, packets: list[eio_packet.Packet], volatile: bool,
              frame: bytes | None = None) -> bool:
        """Send packets to one Engine.IO socket without a task per recipient. A volatile packet
        is dropped for a backed-up socket; any other packet past the server's
        :class:`~server.send_queue.Backlog` bounds (packets or bytes waiting) cuts the socket.

        :param frame: the packets as one pre-encoded WebSocket frame (built once per broadcast).
                      It is written straight to the socket's transport when that cannot
                      overtake anything and the transport is not backed up
                      (:meth:`RealtimeSocket.direct_transport`); otherwise the packets go
                      through the socket's queue as usual.
        """
        eio = self.server.eio
        socket = eio.sockets.get(eio_sid)
        if socket is None or socket.closed or socket.closing:
            return False
        queue = socket.queue
        if frame is not None:
            transport = socket.direct_transport()  # every session is a RealtimeSocket
            if transport is not None:
                buffered = transport.get_write_buffer_size()
                if buffered < DIRECT_WRITE_LIMIT:
                    if not eio.backlog.admit_direct(socket, buffered, len(frame)):
                        return False
                    transport.write(frame)
                    return True
                if volatile:
                    self.metrics.volatile_dropped.inc()
                    return False
        if volatile and queue.qsize() >= VOLATILE_QUEUE_LIMIT:
            self.metrics.volatile_dropped.inc()
            return False
        if not eio.backlog.admit(socket, _size(packets)):
            return False
        for p in packets:
            queue.put_nowait(p)
        return True

    # ------------------------------------------------------------------ following channels

    def _on_publication(self, channel: str, publication: Publication) -> None:
        """A subscribed channel has a new publication (called by the channel log)."""
        cursor = self.deliveries.cursors.get(channel)
        if cursor is None:
            if channel not in self._unopened:
                return  # no longer ours (or another node's channel on this node's route)
            cursor = self._open_unopened(channel)  # its first publication (or a later one: a gap)
        if cursor.catching_up:
            self._announced[channel] = max(self._announced.get(channel, 0), publication.offset)
            if publication.epoch != cursor.epoch:
                self._recheck.add(channel)  # the read under way may predate that epoch
            return
        if publication.epoch == cursor.epoch:
            if publication.offset == cursor.offset + 1:
                self._deliver(channel, cursor, publication)
                return
            if publication.offset <= cursor.offset:
                if not self.deliveries.reused(cursor, publication.offset, publication.time_ms):
                    return  # already delivered (by a gap read)
                # A failover lost what this node delivered from here on, and the offsets were
                # given to new publications: deliver those (from the history, in order).
                log.warning("channel %s: offsets from %d were reused after a failover; delivering again from there",
                            channel, publication.offset)
                self.metrics.recoveries.labels(split_channel(channel)[0], "offsets_reused").inc()
                self._renew_epoch(channel, cursor)
                self.deliveries.rewind(cursor, publication.offset)
        elif not cursor.epoch and publication.offset == 1:
            self.deliveries.reset(cursor, publication.epoch)  # the channel's first publication
            self._deliver(channel, cursor, publication)
            return
        self._announced[channel] = publication.offset
        self._catch_up(channel)

    def _on_resync(self, channel: str) -> None:
        """Notifications of ``channel`` may have been lost (its subscription was renewed)."""
        if channel in self.deliveries.cursors:
            self._catch_up(channel)

    def _on_route_resync(self) -> None:
        """Notifications of this node's route may have been lost: read every channel of it
        this node has a cursor of; the unopened ones are taken down now, to have their
        positions read (:meth:`_probe_unopened`) and be opened only if they have a
        publication."""
        route = self.route
        for channel in [c for c in self.deliveries.cursors if route_of(c) == route]:
            self._catch_up(channel)
        if not self._unopened:
            return
        # Taken now, not when the probe starts: a follow() that opens one of them in between
        # (from the start, without a read) must still have it read.
        self._to_probe.update(self._unopened)
        if self._probing is None:
            self._probing = asyncio.get_running_loop().create_task(self._probe_unopened(), name="probe unopened")

    async def _probe_unopened(self) -> None:
        """Read :attr:`_to_probe`, channels that were unopened at a resync: those that have a
        publication (its notification may have been lost) are opened from the start, or read
        from their cursor if a ``follow()`` opened them meanwhile; the others stay unopened.
        Positions are read :data:`PROBE_BATCH` at a time: a Redis blip at 10,000 new sockets
        costs ten pipelined reads of positions, not 10,000 reads of history. A channel whose
        publication comes after its position was read is opened by that publication's
        notification (the route's subscription was renewed before the resync). A resync during
        the reads adds its channels, read after. When a read fails, every channel still to be
        read is opened and read, as if it had had a cursor."""
        try:
            while self._to_probe:
                channels = list(self._to_probe)
                self._to_probe.clear()
                for start in range(0, len(channels), PROBE_BATCH):
                    batch = channels[start:start + PROBE_BATCH]
                    try:
                        positions = await self.log.positions(batch)
                    except Exception as exc:
                        rest = channels[start:] + list(self._to_probe)  # (one twice is read once)
                        self._to_probe.clear()
                        log.warning("could not read the positions of %d unopened channels; reading each: %s",
                                    len(rest), exc)
                        self._open_and_read(rest)
                        return
                    self._open_and_read([c for c, position in zip(batch, positions) if position.offset])
        finally:
            self._probing = None

    def _open_and_read(self, channels: list[str]) -> None:
        """Read ``channels``, each of which may have a publication this node missed: those still
        unopened from the start (one that a ``follow()`` opened meanwhile, from its cursor)."""
        for channel in channels:
            if channel in self._unopened:
                self._open_unopened(channel)
            self._catch_up(channel)

    def _open_unopened(self, channel: str) -> ChannelCursor:
        """Give a channel of :attr:`_unopened` its cursor: at the start (its members joined
        before its first publication)."""
        self._unopened.discard(channel)
        return self.deliveries.open(channel, 0, "")

    def _hold(self, channel: str) -> bool:
        """Follow ``channel``, which nobody can have published to yet, through this node's
        held route, without a cursor until its first publication (see :attr:`_unopened`).
        False when it is not on the held route (or is being opened or closed)."""
        if not self._route_held or channel in self._opening or channel in self._closing:
            return False
        if channel in self.deliveries.cursors or channel in self._unopened:
            return True
        if route_of(channel) != self.route:
            return False
        self._unopened.add(channel)
        return True

    def _catch_up(self, channel: str) -> None:
        cursor = self.deliveries.cursors.get(channel)
        if cursor is None or channel in self._catching_up:
            return
        cursor.catching_up = True
        task = asyncio.get_running_loop().create_task(self._read_gap(channel, cursor), name=f"gap {channel}")
        self._catching_up[channel] = task

    async def _read_gap(self, channel: str, cursor: ChannelCursor) -> None:
        """Deliver what ``channel`` published after the cursor, reading its history, until the
        cursor has reached every offset announced meanwhile."""
        backoff = 0.05
        try:
            while self.deliveries.cursors.get(channel) is cursor:
                self._recheck.discard(channel)  # this read sees any epoch announced until now
                # The read starts at the offset delivered last when its time is known, to see
                # whether it is still the same publication (a failover may have lost it and given
                # its offset to another one before this node heard of any).
                probe = cursor.recent[-1] if cursor.recent and cursor.recent[-1][0] == cursor.offset else None
                try:
                    self.metrics.channel_reads.labels("gap").inc()
                    result = await self.log.history(
                        channel, since=StreamPosition(cursor.offset - 1 if probe else cursor.offset, cursor.epoch),
                        limit=PAGE)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # Redis away: keep the cursor, catch up when it returns
                    if self.follower_healthy:
                        log.warning("channel %s unreadable, will catch up when it returns: %s", channel, exc)
                    self.follower_healthy = False
                    self.metrics.redis_errors.inc()
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                self.follower_healthy = True
                position = result.position
                if not position.epoch:
                    break  # the channel is gone (expired): nothing to deliver
                if position.epoch != cursor.epoch and result.previous_epoch and result.previous_epoch == cursor.epoch:
                    # A failover lost writes and the epoch was renewed (by this node or another):
                    # the new one continues ours below its base; deliver again from there.
                    log.warning("channel %s: epoch %s continues %s below offset %d (a failover lost writes)",
                                channel, position.epoch, cursor.epoch, result.base)
                    self.deliveries.continue_epoch(cursor, position.epoch, result.base)
                    self._announced.pop(channel, None)
                    continue  # read again from the cursor, in the new epoch
                if position.epoch != cursor.epoch:
                    # The channel started again (expired, or Redis lost it): every publication
                    # of the new epoch is new to this node.
                    self.deliveries.reset(cursor, position.epoch)
                    self._announced.pop(channel, None)
                elif position.offset < cursor.offset:
                    # The channel went back (a failover lost its newest publications): its next
                    # offsets will be new publications, to be delivered.
                    log.warning("channel %s went back from offset %d to %d (a failover lost writes)",
                                channel, cursor.offset, position.offset)
                    self.metrics.recoveries.labels(split_channel(channel)[0], "offsets_reused").inc()
                    self._renew_epoch(channel, cursor)
                    self.deliveries.rewind(cursor, position.offset + 1)
                elif probe is not None and result.publications and result.publications[0].offset == probe[0]:
                    if result.publications[0].time_ms != probe[1]:
                        log.warning("channel %s: offset %d was reused after a failover", channel, probe[0])
                        self.metrics.recoveries.labels(split_channel(channel)[0], "offsets_reused").inc()
                        if await self._renew(channel, cursor.epoch, list(cursor.recent)):
                            continue  # read again: the new epoch says from where to deliver
                        self.deliveries.rewind(cursor, probe[0])
                elif not result.recoverable and not (
                        probe is not None and result.publications
                        and result.publications[0].offset == cursor.offset + 1):
                    # (A probe read from before the offset delivered last, which may be trimmed.)
                    self.metrics.recoveries.labels(split_channel(channel)[0], "gap").inc()
                for publication in result.publications:
                    if publication.epoch == cursor.epoch and publication.offset > cursor.offset:
                        if (cursor.replaced_until >= publication.offset
                                and self.deliveries.seen(cursor, publication.offset, publication.time_ms)):
                            cursor.offset = publication.offset  # delivered before the epoch was renewed
                            continue
                        self._deliver(channel, cursor, publication)
                if len(result.publications) == PAGE:
                    continue
                # Everything up to the position read is delivered or gone (trimmed, aged out).
                cursor.offset = max(cursor.offset, position.offset)
                if self._announced.get(channel, 0) <= cursor.offset and channel not in self._recheck:
                    break
        finally:
            cursor.catching_up = False
            self._announced.pop(channel, None)
            self._recheck.discard(channel)
            self._catching_up.pop(channel, None)

    def _renew_epoch(self, channel: str, cursor: ChannelCursor) -> None:
        """A failover lost publications this node delivered of ``channel``: tell the channel
        log which ones it delivered (before the cursor forgets them), so the channel's epoch
        changes and a client that received a lost one is never recovered past its successor.
        In a task: delivery does not wait; a failure is logged (another node may renew)."""
        if channel in self._renewing or not cursor.epoch:
            return
        task = asyncio.get_running_loop().create_task(
            self._renew(channel, cursor.epoch, list(cursor.recent)), name=f"renew {channel}")
        self._renewing[channel] = task
        task.add_done_callback(lambda _: self._renewing.pop(channel, None))

    async def _renew(self, channel: str, epoch: str, delivered: list[tuple[int, int]]) -> bool:
        """Renew ``channel``'s ``epoch`` (see :meth:`_renew_epoch`); True when the channel is
        in another epoch now."""
        try:
            position = await self.log.renew_epoch(channel, epoch, delivered)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("channel %s: could not renew epoch %s after lost writes: %s", channel, epoch, exc)
            return False
        if position.epoch == epoch:
            return False
        log.warning("channel %s: epoch %s renewed as %s after a failover lost writes", channel, epoch, position.epoch)
        if channel in self.deliveries.cursors:
            # Move this node's cursor into the new epoch now (after the gap read under way).
            if channel in self._catching_up:
                self._recheck.add(channel)
            else:
                self._catch_up(channel)
        return True

    # ------------------------------------------------------------------ subscriptions

    async def open_channel(self, channel: str, fresh: bool = False) -> ChannelCursor:
        """Subscribe this node to ``channel`` (once) and return its cursor.

        :param fresh: the channel cannot exist yet (a new socket's own room): skip reading its
            position.
        """
        while True:
            await self.follow([channel], [channel] if fresh else ())
            cursor = self.deliveries.cursors.get(channel)
            if cursor is not None:
                return cursor

    async def follow(self, channels: list[str], fresh: Iterable[str] = ()) -> None:
        """Open every channel of ``channels``; on return (with no await after it) all of them
        are followed, so a socket put in their rooms right away misses nothing. (A reaper pass
        in between may have closed one: then it is opened again.)

        Every channel opened during one loop turn, by any caller, is opened together: one
        subscribe call and one read of their positions (:meth:`_open_queued`). Concurrent
        opens of one channel share one open.

        :param fresh: those of ``channels`` that cannot exist yet (see :meth:`open_channel`).
        """
        cursors = self.deliveries.cursors
        if self._inline:
            # Nothing to wait for: each channel is opened here, none can be reaped meanwhile.
            for channel in channels:
                if channel not in cursors:
                    self._open_now(channel, channel in fresh)
            return
        new = set(fresh)
        while True:
            if self._closing:
                for channel in channels:
                    closing = self._closing.get(channel)
                    if closing is not None:
                        await asyncio.shield(closing)
            waits: list[asyncio.Future] = []
            for channel in channels:
                if channel in cursors:
                    continue
                opening = self._opening.get(channel)
                if opening is None:
                    # An unopened channel's members hold it from the start: so does its cursor.
                    opening = self._queue_open(channel, channel in new or channel in self._unopened)
                elif opening is self._open_task and channel not in new and channel not in self._unopened:
                    self._queued_opens[channel] = False  # not sent yet: read its position too
                if opening not in waits:
                    waits.append(opening)
            if not waits:
                return
            # Shielded: the open is shared; a caller that gives up must not cancel it for the others.
            if len(waits) == 1:
                await asyncio.shield(waits[0])
            else:
                await asyncio.gather(*map(asyncio.shield, waits))

    def _queue_open(self, channel: str, fresh: bool) -> asyncio.Task:
        """Open ``channel`` with every other channel queued during this loop turn; returns the
        task that opens them."""
        self._queued_opens[channel] = fresh
        task = self._open_task
        if task is None:
            task = self._open_task = asyncio.get_running_loop().create_task(self._open_queued(), name="open channels")
        self._opening[channel] = task
        return task

    async def _open_queued(self) -> None:
        """Subscribe the queued channels, read the positions of those not fresh and open their
        cursors (runs one loop turn after the first was queued)."""
        batch, self._queued_opens = self._queued_opens, {}
        task, self._open_task = self._open_task, None
        channels = list(batch)
        try:
            await self.log.subscribe(channels)
            stale = [c for c, fresh in batch.items() if not fresh]
            read = dict(zip(stale, await self.log.positions(stale))) if stale else {}
            for channel in channels:
                if channel not in self.deliveries.cursors:
                    position = read.get(channel, EMPTY)
                    self.deliveries.open(channel, position.offset, position.epoch)
                    self._unopened.discard(channel)
        except Exception:
            # Not followed after all (a timeout, a cluster slot without an owner): nothing else
            # would unsubscribe them, the reaper walks cursors, and a route would stay held.
            unopened = [c for c in channels if c not in self.deliveries.cursors]
            if unopened:
                self._unsubscribe(unopened)
            raise
        finally:
            for channel in batch:
                if self._opening.get(channel) is task:
                    del self._opening[channel]

    def _unsubscribe(self, channels: list[str]) -> asyncio.Task:
        """Unsubscribe ``channels`` in a task (returned); an open of one of them meanwhile
        waits for it (``_closing``). A failure is logged: they stay subscribed, harmlessly."""
        async def unsubscribe() -> None:
            try:
                await self.log.unsubscribe(channels)
            except Exception as exc:
                log.debug("unsubscribe failed (the channels stay subscribed, harmlessly): %s", exc)

        def done(_: asyncio.Task) -> None:
            for channel in channels:
                if self._closing.get(channel) is task:
                    del self._closing[channel]

        task = asyncio.get_running_loop().create_task(unsubscribe(), name="unsubscribe")
        task.add_done_callback(done)  # before any waiter's: an open that resumes finds it gone
        for channel in channels:
            self._closing[channel] = task
        return task

    def _open_new(self, channel: str) -> bool:
        """Follow ``channel``, which nobody can have published to yet (a new socket's own
        room, a new guest's user room), without waiting: its cursor opens at the start now
        and its subscription is sent with the next write's others, unconfirmed (see
        ChannelLog.subscribe_new; RealtimeServer writes a CONNECT reply, which makes the name
        known, once ChannelLog.subscriptions_written says it is written). True when done (also
        when it is followed already); False when the log cannot do it now (then :meth:`follow`
        is the way)."""
        if channel in self.deliveries.cursors:
            return True
        if channel in self._opening or channel in self._closing or not self.log.subscribe_new([channel]):
            return False
        self.deliveries.open(channel, 0, "")
        return True

    def _open_now(self, channel: str, fresh: bool) -> ChannelCursor:
        """:meth:`_open` for the in-process log, done here (it never suspends)."""
        run_now(self.log.subscribe([channel]))
        position = EMPTY if fresh else run_now(self.log.position(channel))
        return self.deliveries.open(channel, position.offset, position.epoch)

    def _has_members(self, channel: str) -> bool:
        namespace, room = split_channel(channel)
        return bool(self.rooms.get(namespace, {}).get(room))

    def _reap_soon(self) -> None:
        if self._reap_timer is None:
            self._reap_timer = asyncio.get_running_loop().call_later(REAP_DELAY, self._start_reap)

    def _start_reap(self) -> None:
        self._reap_timer = None
        if self._reaping is not None and not self._reaping.done():
            self._reap_soon()  # the previous pass is still unsubscribing
            return
        self._reaping = asyncio.get_running_loop().create_task(self._reap(), name="channel-reaper")

    async def _reap(self) -> None:
        try:
            await self.reap()
        except Exception:  # it is what bounds subscriptions: try again later
            log.exception("channel reaper failed")
            self._reap_soon()

    async def reap(self) -> int:
        """Unsubscribe the channels no local socket is in any more; returns how many."""
        idle = [c for c in self.deliveries.cursors
                if not self._has_members(c) and c not in self._opening and c not in self._catching_up]
        if not idle:
            return 0
        for channel in idle:
            self.deliveries.close(channel)
        if self._inline:
            run_now(self.log.unsubscribe(idle))
            return len(idle)
        await asyncio.shield(self._unsubscribe(idle))
        return len(idle)

    # ------------------------------------------------------------------ rooms

    async def join(self, sid: str, namespace: str, room: Any, eio_sid: str | None = None,
                   fresh: bool = False) -> None:
        """Put a socket in ``room``; in a durable namespace, once this node follows the room's
        channel, so the socket receives every publication after its join position.

        :param fresh: the room's channel cannot exist yet (a guest minted by this connect's
            ``user:<id>`` room): following it reads no position (one Redis read less).
        """
        if namespace in self.durable:
            channel = channel_name(namespace, room)
            positions = self.positions.get((namespace, sid))
            if self._inline:
                if positions is not None:
                    self._join_inline(positions, channel, fresh)
            else:
                if not (fresh and (self._hold(channel) or self._open_new(channel))):
                    await self.follow([channel], (channel,) if fresh else ())
                if positions is not None:
                    self.deliveries.join(positions, channel)
        try:
            self.add_to_room(sid, namespace, room, eio_sid=eio_sid)
        except BaseException:
            # (The socket was gone: a channel _hold put in _unopened for it alone leaves again.)
            if self._unopened:
                channel = channel_name(namespace, room)
                if not self._has_members(channel):
                    self._unopened.discard(channel)
            raise

    def _join_inline(self, positions: SocketPositions, channel: str, fresh: bool = False) -> None:
        """The socket is in ``channel`` from now on, in the embedded mode, where every
        publication goes through :meth:`publish` on this node: a channel not followed yet is
        opened by its first publication (most rooms, a socket's own and its ``user:<id>``
        room, never carry one), so here its origin is only the log's position now (what
        opening it would have read: nothing can be published between).

        :param fresh: the channel cannot exist yet (a new socket's own room).
        """
        if channel in self.deliveries.cursors:
            self.deliveries.join(positions, channel)
        elif channel not in positions.origin:
            position = EMPTY if fresh else run_now(self.log.position(channel))
            positions.origin[channel] = (position.offset, position.epoch)

    async def admit(self, eio_sid: str, namespace: str, sid: str | None = None) -> str | None:
        """As python-socketio's, but a recovering socket keeps its previous ``sid``, and in a
        durable namespace the node follows the socket's own and the namespace's channels
        before the socket counts as connected."""
        if sid is None:
            sid = await self.library_pre_connect(eio_sid, namespace)
            recovering = False
        else:
            if self.is_connected(sid, namespace) or self.eio_sid_from_sid(sid, namespace):
                return None
            try:
                self.add_to_room(sid, namespace, None, eio_sid=eio_sid)
            except Exception:  # this Engine.IO session is in the namespace already
                return None
            self.add_to_room(sid, namespace, sid, eio_sid=eio_sid)
            self.pending_connect.setdefault(namespace, []).append(sid)
            if namespace in self.durable:
                # Live publications wait until its replay is written (see release).
                self._recovering[(namespace, sid)] = []
            recovering = True
        if sid is not None and namespace in self.durable:
            positions = self.positions[(namespace, sid)] = SocketPositions(base_seq=self.deliveries.seq)
            own = channel_name(namespace, sid)
            if self._inline:
                everyone = channel_name(namespace, None)
                if everyone not in self.deliveries.cursors:
                    self._open_now(everyone, False)
                self.deliveries.join(positions, everyone)
                self._join_inline(positions, own, fresh=not recovering)
                return sid
            try:
                if recovering or not (self._hold(own) or self._open_new(own)):
                    await self.follow([channel_name(namespace, None), own], () if recovering else [own])
                elif channel_name(namespace, None) not in self.deliveries.cursors:
                    await self.follow([channel_name(namespace, None)])
            except BaseException:
                self.positions.pop((namespace, sid), None)
                self.drop_socket(sid, namespace)
                raise
            self.deliveries.join(positions, channel_name(namespace, None))
            self.deliveries.join(positions, own)
        return sid

    async def enter(self, sid: str, namespace: str, room: str, eio_sid: str | None = None,
                    fresh: bool = False) -> None:
        await self.join(sid, namespace, room, eio_sid=eio_sid, fresh=fresh)
        if namespace in self.durable:
            await self.server.save_session_of(namespace, sid)

    async def leave(self, sid: str, namespace: str, room: str) -> None:
        await self.library_leave_room(sid, namespace, room)
        positions = self.positions.get((namespace, sid))
        if positions is not None:
            positions.origin.pop(channel_name(namespace, room), None)
        if namespace in self.durable:
            await self.server.save_session_of(namespace, sid)

    def add_to_room(self, sid: str, namespace: str, room: Any, eio_sid: str | None = None) -> None:
        self.library_basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        self._rooms_of.setdefault((namespace, sid), set()).add(room)

    def remove_from_room(self, sid: str, namespace: str, room: Any) -> None:
        self.library_basic_leave_room(sid, namespace, room)
        if namespace in self.durable and room not in self.rooms.get(namespace, ()):
            self._reap_soon()  # the room's channel has no local member left
            if self._unopened:
                self._unopened.discard(channel_name(namespace, room))
        rooms = self._rooms_of.get((namespace, sid))
        if rooms is not None:
            rooms.discard(room)
            if not rooms:
                del self._rooms_of[(namespace, sid)]

    def socket_rooms(self, sid: str, namespace: str) -> list[str]:
        return [r for r in self._rooms_of.get((namespace, sid), ()) if r is not None]

    def drop_socket(self, sid: str, namespace: str, **kwargs: Any) -> None:
        self.positions.pop((namespace, sid), None)
        self._recovering.pop((namespace, sid), None)
        if namespace not in self.rooms:
            return
        for room in list(self._rooms_of.get((namespace, sid), ())):
            self.remove_from_room(sid, namespace, room)
        # The rest of python-socketio's basic_disconnect, without its scan of every room.
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            if namespace in pending and sid in pending[namespace]:
                pending[namespace].remove(sid)
                if not pending[namespace]:
                    del pending[namespace]

    # ------------------------------------------------------------------ connection state recovery

    def heartbeat(self, namespace: str, sid: str, answered: bool) -> None:
        """A ping was sent to the socket (``answered`` False) or answered (True)."""
        positions = self.positions.get((namespace, sid))
        if positions is not None:
            if answered:
                self.deliveries.pong(positions)
            else:
                self.deliveries.ping(positions)

    def snapshot(self, namespace: str, sid: str, with_trail: bool) -> tuple[dict[str, Position], list[tuple[str, int]]]:
        """What a saved session needs to resolve the client's offset string later: the
        socket's origin and (``with_trail``) what was sent to it since, in order."""
        positions = self.positions.get((namespace, sid))
        if positions is None:
            return {}, []
        self.deliveries.align(positions)
        trail = self.deliveries.trail_of(positions, self.session_trail) if with_trail else []
        return dict(positions.origin), trail

    async def recover(self, namespace: str, sid: str, origin: dict[str, Position],
                      trail: list[tuple[str, int]], token: Any) -> list[tuple[str, Publication]] | None:
        """Rejoin the session's rooms and read what the client missed, or None when recovery is
        impossible: a channel's history no longer reaches back (or its epoch changed), or the
        missed publications weigh more than half of what may wait for a socket
        (``send_queue_max_bytes``; they are written at once, before the CONNECT reply, and
        past the bound would cut the client on every attempt).

        Live publications of the socket's channels are held until :meth:`release`."""
        vector = resolve(origin, trail, token)
        positions = self.positions[(namespace, sid)]
        self._recovering.setdefault((namespace, sid), [])
        for channel in vector:
            ns, room = split_channel(channel)
            if ns == namespace:
                await self.join(sid, namespace, room)
        backlog = self.server.eio.backlog
        budget = backlog.max_bytes // 2 if backlog is not None else None
        weight = 0
        missed: list[tuple[int, int, str, Publication]] = []
        for order, (channel, (offset, epoch)) in enumerate(sorted(vector.items())):
            if offset and not epoch:
                # The channel did not exist when the socket joined, and the client's offset
                # string names a publication of it since: of the epoch it has now.
                epoch = (await self.log.position(channel)).epoch
            since = StreamPosition(offset, epoch)
            while True:
                self.metrics.channel_reads.labels("recovery").inc()
                result = await self.log.history(channel, since=since, limit=PAGE)
                if not result.recoverable:
                    return None
                for publication in result.publications:
                    missed.append((publication.time_ms, order, channel, publication))
                    weight += len(publication.data)
                    if budget is not None and weight > budget:
                        return None
                if len(result.publications) < PAGE:
                    break
                since = result.publications[-1].position
            # What the client holds from now on, in this channel's current epoch (a position of
            # an epoch continued after a lossy failover is the same offset in the new one).
            positions.origin[channel] = (offset, result.position.epoch) if epoch else (0, result.position.epoch)
        missed.sort(key=lambda m: (m[0], m[1], m[3].offset))
        return [(channel, publication) for _, _, channel, publication in missed]

    def replay(self, namespace: str, sid: str, eio_sid: str, missed: list[tuple[str, Publication]]) -> None:
        """Write a recovery's missed publications (before the CONNECT reply), then what was
        held meanwhile and is newer, and deliver live again."""
        positions = self.positions.get((namespace, sid))
        # Where the client stands (recover left it in the origin): live publications held
        # meanwhile that are not newer were already received, or are in the replay.
        through = {c: offset for c, (offset, _) in positions.origin.items()} if positions is not None else {}
        for channel, publication in missed:
            envelope = decode_envelope(publication.data)
            if envelope is None or sid in envelope.skip:
                continue
            self.write(eio_sid, self.packets_of(channel, channel_tag(channel), publication, envelope), False)
            through[channel] = publication.offset
            if positions is not None:
                positions.replayed.append((channel, publication.offset))
        self.release(namespace, sid, eio_sid, through)

    def release(self, namespace: str, sid: str, eio_sid: str | None, through: dict[str, int]) -> None:
        """Stop holding live publications for ``sid``: write those newer than ``through``."""
        held = self._recovering.pop((namespace, sid), None)
        if not held or eio_sid is None:
            return
        for channel, offset, packets in held:
            if offset > through.get(channel, 0):
                self.write(eio_sid, packets, False)
                through[channel] = offset

    async def disconnect_socket(self, sid: str, namespace: str, **kwargs: Any) -> None:
        self._recovering.pop((namespace, sid), None)
        return await self.library_disconnect(sid, namespace, **kwargs)
