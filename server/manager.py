"""RealtimeManager: python-socketio's client manager, extended with durable delivery.

Every non-volatile event a durable namespace emits without an ack is appended to the
EventLog first and delivered by a *follower* task that reads the log in order and writes to
this node's sockets. The same path runs in both modes: in memory mode the follower wakes on
an in-process signal, in Redis mode it blocks on ``XREAD`` — so every node delivers every
durable event in offset order, the offsets a client sees only increase, and a node whose
Redis connection dropped catches up from its last position when it comes back.

Volatile events and events of other namespaces go straight to local sockets and, with
Redis, to the other nodes over the :class:`~server.bus.Bus`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Iterable

import msgpack
from engineio import packet as eio_packet
from socketio import AsyncManager
from socketio import packet as sio_packet

from .bus import Bus
from .engine_socket import DIRECT_WRITE_LIMIT, text_frame
from .event_log import Entry, EventLog, parse_offset
from .metrics import Metrics
from .send_queue import packet_size

log = logging.getLogger("server.delivery")

# A volatile packet is dropped when the socket already has this many packets waiting:
# a slow client skips frames instead of building a backlog.
VOLATILE_QUEUE_LIMIT = 8


def websocket_frame(packets: list[eio_packet.Packet]) -> bytes | None:
    """The WebSocket frame of a single text Engine.IO packet, built once per broadcast;
    None for anything else (binary attachments)."""
    if len(packets) != 1 or not isinstance(packets[0].data, str):
        return None
    return text_frame(packets[0].encode())


@dataclass
class Recovering:
    """Live packets held back while a recovering socket is being replayed its history."""

    held: list[tuple[tuple[int, int], list[eio_packet.Packet]]] = field(default_factory=list)


def _size(packets: list[eio_packet.Packet]) -> int:
    return sum(map(packet_size, packets))


def normalize_args(data: Any) -> list[Any]:
    """python-socketio convention: a tuple is several arguments, None is none, else one."""
    if isinstance(data, tuple):
        return list(data)
    if isinstance(data, list) and getattr(data, "_is_args", False):
        return list(data)
    return [] if data is None else [data]


def encode_entry(event: str, args: list[Any], rooms: list[str] | None, skip: list[str]) -> bytes:
    return msgpack.packb({"e": event, "a": args, "r": rooms, "x": skip}, use_bin_type=True)


def decode_entry(raw: bytes) -> tuple[str, list[Any], list[str] | None, list[str]] | None:
    """Parse a log entry; anything malformed (it came from Redis) is rejected, never trusted."""
    try:
        value = msgpack.unpackb(raw, raw=False)
    except Exception:
        return None
    if not isinstance(value, dict):
        return None
    event, args, rooms, skip = value.get("e"), value.get("a"), value.get("r"), value.get("x")
    if not isinstance(event, str) or not isinstance(args, list):
        return None
    if rooms is not None and (not isinstance(rooms, list) or not all(isinstance(r, str) for r in rooms)):
        return None
    if not isinstance(skip, list) or not all(isinstance(s, str) for s in skip):
        return None
    return event, args, rooms, skip


class RealtimeManager(AsyncManager):
    """Client manager with an event log for durable namespaces.

    :param event_log: where durable events are appended and read back from.
    :param durable_namespaces: namespaces whose events are logged and carry offsets.
    :param metrics: counters to update.
    :param bus: carries emits of namespaces without a log to the other nodes; None without Redis.
    """

    def __init__(self, event_log: EventLog, durable_namespaces: Iterable[str], metrics: Metrics,
                 bus: Bus | None = None) -> None:
        super().__init__()
        self.event_log = event_log
        self.durable = frozenset(durable_namespaces)
        self.metrics = metrics
        self.bus = bus
        self.positions: dict[str, str] = {}
        self.follower_healthy = True
        self._follower: asyncio.Task | None = None
        self._recovering: dict[tuple[str, str], Recovering] = {}
        # After a replay, the follower may still bring entries the replay already sent.
        self._watermarks: dict[tuple[str, str], tuple[int, int]] = {}
        # The rooms of each socket. python-socketio finds them by scanning every room of the
        # namespace (get_rooms, basic_disconnect): O(rooms) per call, O(N^2) at 10k sockets.
        self._rooms_of: dict[tuple[str, str], set[Any]] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        for namespace in sorted(self.durable):
            self.positions[namespace] = (await self.event_log.position(namespace)).offset
        self._follower = asyncio.create_task(self._follow(), name="event-log-follower")

    async def stop(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            try:
                await self._follower
            except (asyncio.CancelledError, Exception):
                pass
            self._follower = None

    async def _follow(self) -> None:
        backoff = 0.05
        while True:
            try:
                batch = await self.event_log.follow(dict(self.positions), timeout=2.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: keep our positions, catch up when it returns
                if self.follower_healthy:
                    log.warning("event log unreachable, will catch up when it returns: %s", exc)
                self.follower_healthy = False
                self.metrics.redis_errors.inc()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if not self.follower_healthy:
                log.info("event log reachable again, catching up from %s", self.positions)
            self.follower_healthy = True
            backoff = 0.05
            for stream, entry in batch:
                self.positions[stream] = entry.offset
                self._deliver_entry(stream, entry)

    # ------------------------------------------------------------------ emit

    async def emit(self, event: str, data: Any, namespace: str, room: Any = None, skip_sid: Any = None,
                   callback: Any = None, to: Any = None, volatile: bool = False, **kwargs: Any) -> None:
        namespace = namespace or "/"
        room = to or room
        args = normalize_args(data)
        skip = [s for s in (skip_sid if isinstance(skip_sid, list) else [skip_sid]) if s]
        rooms = None if room is None else ([room] if isinstance(room, str) else list(room))
        if callback is not None:
            # An event with an ack id carries no offset (as in Node): one recipient, not logged.
            return await super().emit(event, data, namespace, room=room, skip_sid=skip_sid,
                                      callback=callback)
        if namespace in self.durable and not volatile:
            await self.append(namespace, event, args, rooms, skip)
            return
        if volatile and namespace in self.durable and args and isinstance(args[-1], str):
            # The JS client takes a trailing string as an offset; a volatile event must never
            # be mistaken for one, so its arguments end in null instead.
            args = args + [None]
        self.deliver_local(namespace, event, args, rooms, skip, volatile=volatile)
        if self.bus is not None and not kwargs.get("local_only"):
            await self.bus.publish_emit(namespace, event, args, rooms, skip, volatile)

    async def append(self, namespace: str, event: str, args: list[Any], rooms: list[str] | None,
                     skip: list[str]) -> str:
        """Log a durable event; the follower delivers it (on every node). Returns its offset."""
        offset = await self.event_log.append(namespace, encode_entry(event, args, rooms, skip))
        self.metrics.events_logged.labels(namespace).inc()
        return offset

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

    def _deliver_entry(self, namespace: str, entry: Entry) -> None:
        parsed = decode_entry(entry.data)
        if parsed is None:
            log.warning("dropping malformed log entry %s in %s", entry.offset, namespace)
            return
        event, args, rooms, skip = parsed
        targets = self.recipients(namespace, rooms, skip)
        if not targets:
            return
        offset = parse_offset(entry.offset)
        packets = self._encode(namespace, event, [*args, entry.offset])
        frame = websocket_frame(packets)
        delivered = 0
        for sid, eio_sid in targets:
            key = (namespace, sid)
            if self._watermarks:
                mark = self._watermarks.get(key)
                if mark is not None:
                    if offset <= mark:
                        continue  # the replay already sent it
                    del self._watermarks[key]
            held = self._recovering.get(key) if self._recovering else None
            if held is not None:
                held.held.append((offset, packets))
                continue
            self.write(eio_sid, packets, False, frame)
            delivered += 1
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
                if transport.get_write_buffer_size() < DIRECT_WRITE_LIMIT:
                    if not eio.backlog.admit(socket, len(frame)):
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

    # ------------------------------------------------------------------ connection state recovery

    async def pre_connect(self, eio_sid: str, namespace: str, sid: str | None = None) -> str | None:
        """As python-socketio's, but a recovering socket keeps its previous ``sid``."""
        if sid is None:
            return await super().pre_connect(eio_sid, namespace)
        if self.is_connected(sid, namespace) or self.eio_sid_from_sid(sid, namespace):
            return None
        try:
            self.basic_enter_room(sid, namespace, None, eio_sid=eio_sid)
        except Exception:
            return None
        self.basic_enter_room(sid, namespace, sid, eio_sid=eio_sid)
        self.pending_connect.setdefault(namespace, []).append(sid)
        return sid

    def hold(self, namespace: str, sid: str) -> None:
        """Start holding live durable packets for ``sid`` (its replay is being read)."""
        self._recovering[(namespace, sid)] = Recovering()

    def release(self, namespace: str, sid: str, replayed_through: tuple[int, int] | None) -> None:
        """Send what was held (newer than the replay), then deliver live again."""
        state = self._recovering.pop((namespace, sid), None)
        eio_sid = self.eio_sid_from_sid(sid, namespace)
        if state is None or eio_sid is None:
            return
        for offset, packets in state.held:
            if replayed_through is None or offset > replayed_through:
                self.write(eio_sid, packets, False)
                replayed_through = offset
        if replayed_through is not None and replayed_through > parse_offset(self.positions.get(namespace, "0-0")):
            self._watermarks[(namespace, sid)] = replayed_through

    async def replay(self, namespace: str, sid: str, rooms: list[str], after: str) -> list[Entry] | None:
        """Every logged entry after ``after`` addressed to ``sid`` or its ``rooms``, or None when
        recovery is impossible: the log no longer covers ``after``, or the entries weigh more
        than half of what may wait for a socket (``send_queue_max_bytes``; half, as their
        packets weigh a little more than the log's msgpack). The replay is written at once,
        before the CONNECT reply: past the bound it would cut the client on every attempt."""
        if not await self.event_log.covers(namespace, after):
            return None
        backlog = self.server.eio.backlog
        budget = backlog.max_bytes // 2 if backlog is not None else None
        weight = 0
        wanted = set(rooms) | {sid}
        out: list[Entry] = []
        cursor = after
        while True:
            batch = await self.event_log.read(namespace, cursor, 1000)
            for entry in batch:
                parsed = decode_entry(entry.data)
                if parsed is None:
                    continue
                _, _, to, skip = parsed
                if sid in skip:
                    continue
                if to is None or wanted.intersection(to):
                    out.append(entry)
                    weight += len(entry.data)
                    if budget is not None and weight > budget:
                        return None
            if len(batch) < 1000:
                return out
            cursor = batch[-1].offset

    def replay_packets(self, namespace: str, entry: Entry) -> list[eio_packet.Packet] | None:
        parsed = decode_entry(entry.data)
        if parsed is None:
            return None
        event, args, _, _ = parsed
        return self._encode(namespace, event, [*args, entry.offset])

    # ------------------------------------------------------------------ room index

    def basic_enter_room(self, sid: str, namespace: str, room: Any, eio_sid: str | None = None) -> None:
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        self._rooms_of.setdefault((namespace, sid), set()).add(room)

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> None:
        super().basic_leave_room(sid, namespace, room)
        rooms = self._rooms_of.get((namespace, sid))
        if rooms is not None:
            rooms.discard(room)
            if not rooms:
                del self._rooms_of[(namespace, sid)]

    def get_rooms(self, sid: str, namespace: str) -> list[str]:
        return [r for r in self._rooms_of.get((namespace, sid), ()) if r is not None]

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        if namespace not in self.rooms:
            return
        for room in list(self._rooms_of.get((namespace, sid), ())):
            self.basic_leave_room(sid, namespace, room)
        # The rest of python-socketio's basic_disconnect, without its scan of every room.
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            if namespace in pending and sid in pending[namespace]:
                pending[namespace].remove(sid)
                if not pending[namespace]:
                    del pending[namespace]

    async def enter_room(self, sid: str, namespace: str, room: str, eio_sid: str | None = None) -> None:
        await super().enter_room(sid, namespace, room, eio_sid=eio_sid)
        if namespace in self.durable:
            await self.server.save_session_of(namespace, sid)

    async def leave_room(self, sid: str, namespace: str, room: str) -> None:
        await super().leave_room(sid, namespace, room)
        if namespace in self.durable:
            await self.server.save_session_of(namespace, sid)

    async def disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        self._recovering.pop((namespace, sid), None)
        self._watermarks.pop((namespace, sid), None)
        return await super().disconnect(sid, namespace, **kwargs)
