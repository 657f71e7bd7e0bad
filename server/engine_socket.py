"""RealtimeSocket: python-engineio's session, without a Task per packet or per idle socket.

python-engineio spends, for every inbound WebSocket message, a Task and a ``wait_for`` to
read it and another Task to handle it; for every outbound packet a queue hand-off that wakes
a writer Task (through another ``wait_for``); and for every socket a Task that sleeps between
heartbeats. Those were most of the echo path's cost and a good part of an idle connection's
memory. This subclass keeps the library's protocol handling and changes only that:

- an inbound MESSAGE is handled by :func:`~server.eager.start_eagerly` (a Task only if the
  handler has to wait), for WebSocket and long-polling alike; the packets of one connection
  are handled one after the other in arrival order (a handler that waits holds back the next
  one, so a later event can never reach the log before an earlier one), except acks, which a
  waiting handler may itself be waiting for; when ``max_inflight_events`` packets wait, the
  transport stops reading from the client until they are down again (backpressure, no loss);
- a new session's plain WebSocket is read by server/websocket.py's protocol (no Task at all);
  an upgrade from polling or a compressed one by aiohttp's read loop here, which waits on the
  read itself; both hand each message to :meth:`RealtimeSocket.read_message` and end through
  :meth:`RealtimeSocket.websocket_ended`; the read watchdog (one schedule for all sockets,
  moved at every read) cuts off a client silent for a whole heartbeat cycle;
- a packet for a WebSocket goes straight to the TCP transport as one frame when nothing is
  queued before it and the transport is not backed up; otherwise it is queued, and the
  writer marks a packet done only once written, so "nothing unfinished" really means it;
- the heartbeat PING is a timer, not a sleeping Task.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import deque
from typing import Any

from aiohttp import WSMsgType
from engineio import exceptions
from engineio import packet as eio_packet

from .adapter import SocketAdapter
from .codec import text_frame  # the server-to-client text frame (compiled after make install)
from .deadlines import Deadlines
from .eager import start_eagerly
from .send_queue import packet_size

log = logging.getLogger("server.engine")

# The context the heartbeat schedules' timers (ping, pong, read watchdog) run in, one for all:
# without it every call_later copies the current context, a Context object per timer the
# collector tracks (bench/conn_memory.py --types). Their callbacks set no context
# variable (a Task they start copies this one, as any Task does).
TIMER_CONTEXT = contextvars.Context()

# Direct frame writes stop when a transport has this much unsent; the queue takes over.
DIRECT_WRITE_LIMIT = 64 * 1024
_DATA = (WSMsgType.TEXT, WSMsgType.BINARY)

# The Engine.IO packet types a client may send once its session is open: PONG, MESSAGE and
# CLOSE are handled; NOOP and UPGRADE outside the upgrade exchange mean nothing and are
# ignored, as the Node server does. OPEN, PING (the v4 heartbeat goes server to client) and
# any unknown type end the session.
CLIENT_PACKET_TYPES = frozenset({eio_packet.CLOSE, eio_packet.PONG, eio_packet.MESSAGE,
                                 eio_packet.UPGRADE, eio_packet.NOOP})


class PacketNotAllowed(exceptions.EngineIOError):
    """A client sent an Engine.IO packet type it may not send (see ``CLIENT_PACKET_TYPES``)."""


def tcp_transport(ws: Any) -> asyncio.Transport | None:
    """The TCP transport under an aiohttp WebSocketResponse (None before it is prepared)."""
    writer = ws._writer
    return writer.transport if writer is not None else None


# Stands in a connection's waiting packets for an Engine.IO CLOSE that came behind them.
_CLOSE = object()


def heartbeat_schedules(server: Any) -> tuple[Deadlines, Deadlines, Deadlines]:
    """The heartbeat schedules of ``server``'s sessions (server/deadlines.py), one timer each
    for all sessions, built with the server (RealtimeEngine.__init__):

    - PINGs: ``ping_interval`` after a session's OPEN or its last PONG, ``RealtimeSocket._ping``;
    - PONGs owed: ``ping_timeout`` after a PING, ``RealtimeSocket._pong_due`` ends the session
      if none came;
    - the read watchdog: ``ping_interval + ping_timeout`` after the last read from a session's
      WebSocket, ``RealtimeSocket._watch`` cuts it off (the readers re-arm it at every read).

    They replace python-engineio's service task (``monitor_clients=False``, server/app.py),
    which walked every session once per ``ping_timeout`` with a Task and a timer per session
    (``asyncio.wait_for``): idle CPU that grew with the number open (10,000 idle connections:
    4.4 % of a core)."""
    return (Deadlines(None, server.ping_interval, RealtimeSocket._ping, TIMER_CONTEXT),
            Deadlines(None, server.ping_timeout, RealtimeSocket._pong_due, TIMER_CONTEXT),
            Deadlines(None, server.ping_interval + server.ping_timeout, RealtimeSocket._watch, TIMER_CONTEXT))


def plain_fd(transport: asyncio.Transport | None) -> int:
    """The file descriptor of ``transport``'s socket when bytes written to it go to the peer
    as they are (plain TCP), else -1 (no transport, TLS: bytes must pass the encryption).

    server/_codec.pyx's write_frames sends a fan-out's frame to it with one ``send()`` where
    the transport itself would (nothing unsent in it, not closing: the descriptor is still
    open, it closes only after ``is_closing()`` turns true, and the frame overtakes nothing),
    and hands the transport whatever the kernel did not take. That is what uvloop's and
    asyncio's ``write()`` do first, without their bookkeeping per call (a fan-out makes one
    such write per member)."""
    if transport is None or transport.get_extra_info("sslcontext") is not None:
        return -1
    sock = transport.get_extra_info("socket")
    return sock.fileno() if sock is not None else -1


class RealtimeSocket(SocketAdapter):
    """An Engine.IO session (see the module docstring for what differs from python-engineio)."""

    # The TCP transport of this session's WebSocket while it is open and uncompressed (an
    # aiohttp WebSocketResponse keeps its transport for life: looked up once, not per write).
    ws_out: asyncio.Transport | None = None
    # The file descriptor under ws_out when that is plain TCP (no TLS), else -1: the fan-out
    # loop writes a frame to it itself when the transport holds nothing unsent (see plain_fd).
    ws_fd = -1
    _ws: Any = None  # what the queued writer sends through while this session's WebSocket is open
    _tcp: asyncio.Transport | None = None  # the TCP transport under it (compressed or not)
    overflowed = False  # set by Backlog when its bounds cut this session: nothing more is sent
    _writer: asyncio.Future[None] | None = None
    # Inbound packets waiting for this connection's running handler to finish; None while
    # no handler of this connection is waiting on anything.
    _waiting: deque[Any] | None = None
    # Resolved when the waiting packets drop below the in-flight bound (reading is paused).
    _drained: asyncio.Future[None] | None = None
    closed_by_client = False  # the client sent an Engine.IO CLOSE

    # ------------------------------------------------------------------ inbound

    async def on_packet(self, pkt: eio_packet.Packet) -> None:
        """Handle one packet from the client, over either transport.

        Unlike python-engineio's, which answers a stray UPGRADE with a NOOP, raises for a
        PING/OPEN/NOOP (and its POST handler then waited forever for a queue only a poll
        drains) and fails with an IndexError on an unknown type.

        :raises PacketNotAllowed: for a type not in ``CLIENT_PACKET_TYPES``.
        """
        kind = pkt.packet_type
        if kind == eio_packet.MESSAGE:
            self._dispatch(pkt.data)
        elif kind == eio_packet.PONG:
            if self.last_ping and self.server.heartbeat is not None:
                # Everything sent before the ping has reached the client (server.core.positions).
                self.server.heartbeat(self.sid, True)
            self.arm_ping()
        elif kind == eio_packet.CLOSE:
            # As in Node's engine.io, the client closing its transport is a "transport close",
            # recoverable: socket.io-client sends it after a polling request failed, and then
            # reconnects to recover. A client that leaves on purpose has sent its namespace
            # DISCONNECT first, and the CLOSE waits behind it.
            if self._waiting is not None:
                self._waiting.append(_CLOSE)
            else:
                await self._closed_by_client()
        elif kind not in CLIENT_PACKET_TYPES:
            raise PacketNotAllowed(kind)

    def _dispatch(self, data: Any) -> None:
        handler = self.server.handlers.get("message")
        if handler is None:
            return
        if data.__class__ is str and data[:1] == "3":
            # An ack never waits its turn: the running handler may be waiting for it.
            start_eagerly(handler(self.sid, data))
        elif self._waiting is not None:
            self._waiting.append(data)
        elif (task := start_eagerly(handler(self.sid, data))) is not None:
            self._waiting = deque()
            task.add_done_callback(self._next)

    def _next(self, _task: Any = None) -> None:
        """The running handler finished: start the waiting packets, in order, until one waits."""
        waiting = self._waiting
        handler = self.server.handlers.get("message")
        while waiting and handler is not None:
            data = waiting.popleft()
            if data is _CLOSE:
                waiting.clear()
                start_eagerly(self._closed_by_client())
                continue
            if (task := start_eagerly(handler(self.sid, data))) is not None:
                task.add_done_callback(self._next)
                break
        else:
            self._waiting = None
        if self._drained is not None and self.inbound_backlog() < self.server.max_inflight_events:
            if not self._drained.done():
                self._drained.set_result(None)
            self._drained = None

    async def _closed_by_client(self) -> None:
        self.closed_by_client = True  # it wants nothing more: the engine forgets it at once
        await self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)

    def inbound_backlog(self) -> int:
        """Packets of this connection waiting for an earlier handler to finish."""
        return len(self._waiting) if self._waiting is not None else 0

    async def wait_for_backlog(self) -> None:
        """Return once fewer than ``max_inflight_events`` packets wait (stop reading until then)."""
        if self.inbound_backlog() < self.server.max_inflight_events:
            return
        await self.drained()

    def drained(self) -> asyncio.Future[None]:
        """A future resolved once fewer than ``max_inflight_events`` packets wait: a reader
        that is backlogged stops reading until then (counted as a backpressure pause)."""
        metrics = self.server.metrics
        if metrics is not None:
            metrics.backpressure_pauses.inc()
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()
        return self._drained

    async def on_post(self, environ: dict) -> None:
        # RealtimeEngine has already read, counted and decoded the body (rt.packets).
        packets = environ.get("rt.packets")
        if packets is None:
            return await self.library_handle_post_request(environ)
        for pkt in packets:
            await self.on_packet(pkt)
            # The POST is answered only once the backlog is within bounds: a polling client
            # sends its next POST after this one's answer, so it is held back the same way.
            await self.wait_for_backlog()
        return None

    # ------------------------------------------------------------------ outbound

    async def send_packet(self, pkt: eio_packet.Packet) -> None:
        last_ping = self.last_ping
        if self.closed or (last_ping and time.time() - last_ping > self.server.ping_timeout):
            if not await self.check_ping_timeout():
                return
        self.send_nowait(pkt)

    def send_nowait(self, pkt: eio_packet.Packet) -> None:
        """Write ``pkt`` now if it cannot overtake anything, else queue it for the writer;
        drop it when the session's backlog is over its bounds (the session is cut then)."""
        backlog = self.server.backlog
        if pkt.packet_type != eio_packet.NOOP and isinstance(pkt.data, (str, type(None))):
            transport = self.direct_transport()
            if transport is not None:
                buffered = transport.get_write_buffer_size()
                if buffered < DIRECT_WRITE_LIMIT:
                    if backlog is not None and not backlog.admit_direct(self, buffered, packet_size(pkt)):
                        return
                    transport.write(text_frame(pkt.encode()))
                    return
        if backlog is not None and not backlog.admit(self, packet_size(pkt)):
            return
        self.queue.put_nowait(pkt)

    def write_text(self, text: str) -> bool:
        """Send the encoded Socket.IO packet ``text`` as a MESSAGE, if it can go straight to the
        WebSocket now: :meth:`send_packet` and :meth:`send_nowait` for that case, without the
        Engine.IO packet. True when done (written, or dropped by the backlog's bounds, as
        send_nowait would); False when it must go the general way (send_packet): the session
        is closed, its ping is overdue, or the frame could overtake queued packets."""
        last_ping = self.last_ping
        if self.closed or (last_ping and time.time() - last_ping > self.server.ping_timeout):
            return False
        transport = self.ws_out
        if transport is None or self.upgrading or self.queue._unfinished_tasks or transport.is_closing():
            return False
        buffered = transport.get_write_buffer_size()
        if buffered >= DIRECT_WRITE_LIMIT:
            return False
        backlog = self.server.backlog
        # Backlog.admit_direct, asked only when its answer is not a plain yes (nothing cut,
        # packets allowed, and nothing buffered or room for this one).
        if backlog is not None and (self.overflowed or backlog.max_packets <= 0
                                    or (buffered and buffered + len(text) > backlog.max_bytes)):
            if not backlog.admit_direct(self, buffered, len(text)):
                return True
        message = "4" + text
        transport.write(text_frame(message))
        return True

    def write_buffer_size(self) -> int:
        """Bytes written to this session's WebSocket that the kernel has not taken yet (the
        client is not reading them); 0 without a WebSocket."""
        transport = self._tcp
        return transport.get_write_buffer_size() if transport is not None else 0

    def direct_transport(self) -> asyncio.Transport | None:
        """The TCP transport to write frames to directly, or None when that could reorder
        packets (something is queued or being written, an upgrade is under way) or the
        WebSocket is compressed or gone."""
        transport = self.ws_out
        if transport is None or self.upgrading or self.queue._unfinished_tasks or transport.is_closing():
            return None
        return transport

    # ------------------------------------------------------------------ heartbeat

    def arm_ping(self) -> None:
        if self.last_ping:
            self.last_ping = None
            self.server.ping_deadlines.arm(self)

    def _ping(self) -> None:
        if not self.closing and not self.closed:
            self.last_ping = time.time()
            self.server.pong_deadlines.arm(self)
            if self.server.heartbeat is not None:
                self.server.heartbeat(self.sid, False)
            self.send_nowait(eio_packet.Packet(eio_packet.PING))

    def _pong_due(self) -> None:
        """``ping_timeout`` after a PING: end the session if its PONG has not come (as
        python-engineio's ``check_ping_timeout``, which its service task ran)."""
        last_ping = self.last_ping
        if self.closing or self.closed or not last_ping:
            return
        if time.time() - last_ping < self.server.ping_timeout - 0.05:  # (the wall clock moved)
            self.server.pong_deadlines.arm(self)
            return
        self.server.logger.info("%s: Client is gone, closing socket", self.sid)
        start_eagerly(self.close(wait=False, abort=False, reason=self.server.reason.PING_TIMEOUT))

    async def close_session(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        # Every way a session ends comes here: none of its deadlines outlives it (the read
        # watchdog is also cancelled when reading stops, which can come first).
        server = self.server
        server.ping_deadlines.cancel(self)
        server.pong_deadlines.cancel(self)
        server.read_deadlines.cancel(self)
        await self.library_close(wait=wait, abort=abort, reason=reason)

    # ------------------------------------------------------------------ WebSocket transport

    def websocket_opened(self, ws: Any, request: Any) -> bool:
        """A session that starts on a WebSocket runs it from RealtimeEngine.serve, the
        request's top frame of ours, once python-engineio's call chain has returned: each idle
        connection then keeps seven fewer suspended coroutine frames (python-engineio's
        handle_request, _handle_connect, handle_get_request, _upgrade_websocket, the driver's
        __call__, _websocket_handler and the hand-over to it). An upgrade from polling runs
        where it is (it is rarer and needs its probe exchange first)."""
        if self.connected or not getattr(self.server, "runs_websockets", False):
            return False
        self.connected = True
        self.upgraded = True
        request["rt_websocket"] = (self, ws)
        return True

    async def serve_websocket(self, ws: Any) -> None:
        if self.connected:
            if not await self._upgrade_handshake(ws):
                return
        else:
            self.connected = True
            self.upgraded = True
        await self.run_websocket(ws)

    async def run_websocket(self, ws: Any) -> None:
        """Read the open aiohttp WebSocket ``ws`` until it ends, then end the session (the path
        of a compressed WebSocket and of an upgrade from polling; a new uncompressed session's
        WebSocket is read by server/websocket.py's protocol instead)."""
        server = self.server
        sock = ws._sock
        transport = tcp_transport(sock)
        self.open_websocket(ws, transport, direct=not sock.compress)
        limit = server.max_http_buffer_size
        watchdogs = server.read_deadlines
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    msg = await sock.receive()
                except Exception:  # the connection broke
                    break
                if msg.type not in _DATA:
                    break
                watchdogs.arm(self)  # a heartbeat cycle from this read
                data = msg.data
                if len(data) > limit or not self.read_message(data, loop):
                    break
                if self.backlogged():
                    await self.wait_for_backlog()  # stop reading until the handlers catch up
                    watchdogs.arm(self)
        finally:
            self.stop_reading()
        await self.websocket_ended()

    def open_websocket(self, writer: Any, transport: asyncio.Transport | None, direct: bool) -> None:
        """This session's WebSocket is open: packets go to it from now on.

        :param writer: what the queued writer sends through (``await send(message)``, text or
            bytes, one message a frame; ``await close()``).
        :param transport: the TCP transport under it (the watchdog aborts it).
        :param direct: frames may be written to ``transport`` directly (no compression).
        """
        server = self.server
        if direct:
            self.ws_out = transport
            self.ws_fd = plain_fd(transport)
        self._tcp = transport
        # The writer Task exists only while packets wait in the queue (most go out directly).
        self._ws = writer
        queue = self.queue
        queue.on_put = self._start_writer
        if not queue.empty():
            self._start_writer()
        # A client silent for a whole heartbeat cycle is cut off. The deadline is on the
        # server's read-watchdog schedule (one timer for all sessions, server/deadlines.py),
        # moved to a heartbeat cycle from each read by the readers: no TimerHandle, loop timer
        # and bound method per connection for the collector to track, no loop timer to add
        # to (and take from) the loop's heap per connect.
        server.read_deadlines.arm(self)

    def read_message(self, data: Any, loop: asyncio.AbstractEventLoop | None = None) -> bool:
        """Handle one WebSocket message from the client (both readers call this); False when
        the connection must end (an undecodable packet, a type a client may not send).

        :param data: the message (str for a text frame, bytes for a binary one).
        :param loop: the running event loop, when the reader has it (saves a system call per
                     message: see server/eager.py's ``start_eagerly``).
        """
        if data.__class__ is str and data[:1] == "4":
            # The common case, without a Packet object: _dispatch inline (one frame less).
            handler = self.server.handlers.get("message")
            if handler is None:
                return True
            data = data[1:]
            if data[:1] == "3":
                start_eagerly(handler(self.sid, data), loop)  # an ack never waits its turn
            elif self._waiting is not None:
                self._waiting.append(data)
            elif (task := start_eagerly(handler(self.sid, data), loop)) is not None:
                self._waiting = deque()
                task.add_done_callback(self._next)
            return True
        try:
            pkt = eio_packet.Packet(encoded_packet=data)
        except Exception:
            log.info("%s: undecodable Engine.IO packet, closing", self.sid)
            return False
        if pkt.packet_type not in CLIENT_PACKET_TYPES:
            log.info("%s: Engine.IO packet type %s not allowed from a client, closing", self.sid, pkt.packet_type)
            return False
        if self.closed:
            return False
        # Only a CLOSE waits (for the session's end); the rest is done before this returns.
        start_eagerly(self.on_packet(pkt), loop)
        return True

    def backlogged(self) -> bool:
        """Whether ``max_inflight_events`` packets wait: the reader stops until they drain."""
        return self._waiting is not None and len(self._waiting) >= self.server.max_inflight_events

    def stop_reading(self) -> None:
        """The WebSocket is not read any more: no watchdog, no direct writes."""
        self.server.read_deadlines.cancel(self)
        self.ws_out = None
        self.ws_fd = -1

    async def websocket_ended(self) -> None:
        """The one end of a session whose WebSocket ended, however it ended: the writer
        closes the WebSocket (after what is queued), then the session closes."""
        queue = self.queue
        queue.put_nowait(None)  # the writer closes the WebSocket when it reaches this
        if self._writer is not None:
            await self._writer
        queue.on_put = self._ws = None  # no reference cycle left for the collector
        self._tcp = None
        await self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)

    def _watch(self) -> None:
        """The read watchdog (``read_deadlines``): nothing read for a whole heartbeat cycle, so
        cut the silent connection off."""
        if self._tcp is not None:
            self._tcp.abort()  # ends the read loop's receive (the protocol's connection_lost)

    async def _upgrade_handshake(self, ws: Any) -> bool:
        """The polling → WebSocket probe exchange, as python-engineio does it."""
        self.upgrading = True
        try:
            data = await ws.wait()
            pkt = eio_packet.Packet(encoded_packet=data)
            if pkt.packet_type != eio_packet.PING or pkt.data != "probe":
                self.upgrading = False
                return False
            await ws.send(eio_packet.Packet(eio_packet.PONG, data="probe").encode())
            self.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))  # ends the pending poll
            data = await ws.wait()
            if eio_packet.Packet(encoded_packet=data).packet_type != eio_packet.UPGRADE:
                self.upgraded = False
                self.upgrading = False
                return False
        except Exception:
            self.upgrading = False
            return False
        self.upgraded = True
        self.upgrading = False
        return True

    def _start_writer(self) -> None:
        if self._writer is None:
            self._writer = asyncio.ensure_future(self._write(self._ws))

    async def _write(self, ws: Any) -> None:
        """Send what is queued, in order, marking each packet done only once written; stop
        when the queue is empty, or close the WebSocket at the None that ends the session."""
        queue = self.queue
        close = False
        try:
            while not queue.empty():
                pkt = queue.get_nowait()
                try:
                    if pkt is None:
                        close = True
                        break
                    await ws.send(pkt.encode())
                finally:
                    queue.task_done()
        except Exception:
            close = True
        finally:
            self._writer = None
        if close:
            queue.on_put = None
            await ws.close()
