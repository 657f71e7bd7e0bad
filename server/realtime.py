"""RealtimeServer: python-socketio's AsyncServer with connection state recovery and input checks.

Connection state recovery follows the wire behaviour of socket.io-client 4.8 and the Node
server (CONNECT reply ``{sid, pid}``, offsets as the last event argument, ``auth.pid`` and
``auth.offset`` on reconnect, missed events written before the CONNECT reply) and fixes what
Node still gets wrong: a client that has received no event yet recovers from the position its
session started at; a pid whose old connection is still open (a half-dead polling session)
takes that connection over instead of failing; recovery can repeat any number of times.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any

import msgpack
from aiohttp import web
from engineio import packet as eio_packet
from realtime_channels.redis_pubsub import Throttled
from redis.exceptions import RedisError
from socketio import exceptions
from socketio import packet as sio_packet

from . import randomness
from .adapter import CountedPayload, EngineAdapter, ServerAdapter
from .bus import Bus
from .codec import ack_text, check_event
from .endings import (CONNECT_TIMEOUT, ENDINGS, EVICTED, PROTOCOL_ERROR, SERVER_DISCONNECTED, SLOW_CONSUMER,
                      Ending)
from .engine_socket import CLIENT_PACKET_TYPES, RealtimeSocket, heartbeat_schedules
from .manager import RealtimeManager, normalize_args
from .metrics import Metrics
from .send_queue import Backlog
from .lean_request import LeanRequest, lean_environ
from .session_environ import SessionEnviron
from .sessions import SavedSession, SessionStore

log = logging.getLogger("server.realtime")

RESERVED_EVENTS = frozenset({"connect", "connect_error", "disconnect", "disconnecting",
                             "newListener", "removeListener"})
MAX_ACK_ID = 2**53 - 1
# Namespace names are cut to this many characters as they are decoded. No namespace served is
# this long, so a longer name is unknown anyway; it is only echoed (the CONNECT_ERROR reply,
# log lines), and a 500 KB name was echoed whole.
MAX_NAMESPACE_LENGTH = 128
# Operators' connections: their own event limits, and refusals reported to the namespace.
OPERATOR_NAMESPACE = "/admin"
NOTEPACK_UNDEFINED = msgpack.ExtType(0, b"\x00")
# Seconds a just-connected socket's session save waits, to go in one pipeline with others'.
SAVE_BATCH_DELAY = 0.01


# Failures of shared state (Redis unreachable, no pool connection free in time).
STORE_ERRORS = (RedisError, OSError, asyncio.TimeoutError)


class ProtocolError(Exception):
    """The client sent something the protocol does not allow; its connection is closed."""


# What decoding client input may raise; each closes the offending connection.
DECODE_ERRORS = (ProtocolError, ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError)


def _placeholders_valid(value: Any, count: int) -> bool:
    """Every ``{"_placeholder": true, "num": n}`` names an attachment that exists (0 <= n < count)."""
    if isinstance(value, list):
        return all(_placeholders_valid(v, count) for v in value)
    if isinstance(value, dict):
        if value.get("_placeholder") is True:
            num = value.get("num")
            return isinstance(num, int) and not isinstance(num, bool) and 0 <= num < count
        return all(_placeholders_valid(v, count) for v in value.values())
    return True


def parse_client_packet(packet_class: Any, data: Any, max_attachments: int) -> Any:
    """Decode and check one Socket.IO packet from a client, before any server state is touched.

    A namespace name longer than ``MAX_NAMESPACE_LENGTH`` is cut to that length.
    Raises one of ``DECODE_ERRORS`` for anything the protocol does not allow from a client:
    an unknown or server-only packet type, a bad ack id, an event that is not an array
    starting with a name, a reserved event name, an attachment count out of range, a
    CONNECT payload that is not an object.
    """
    return check_client_packet(packet_class(encoded_packet=data), max_attachments)


def check_client_packet(pkt: Any, max_attachments: int) -> Any:
    """:func:`parse_client_packet`'s checks of the decoded packet ``pkt``: ``pkt``, or one of
    ``DECODE_ERRORS`` (RealtimeServer.eio_message decodes the packet itself, and checks an
    EVENT without this frame)."""
    kind = pkt.packet_type
    if kind == 2:  # an EVENT, the common packet: its checks below, in one (compiled) call
        problem = check_event(pkt, MAX_NAMESPACE_LENGTH, MAX_ACK_ID, RESERVED_EVENTS)
        if problem is not None:
            raise ProtocolError(problem)
        return pkt
    if kind not in (0, 1, 2, 3, 5, 6):
        raise ProtocolError(f"packet type {kind!r} not allowed from a client")
    if pkt.namespace is not None and not isinstance(pkt.namespace, str):
        raise ProtocolError("namespace must be a string")
    if pkt.namespace is not None and len(pkt.namespace) > MAX_NAMESPACE_LENGTH:
        pkt.namespace = pkt.namespace[:MAX_NAMESPACE_LENGTH]
    if pkt.id is not None and (isinstance(pkt.id, bool) or not isinstance(pkt.id, int)
                               or not 0 <= pkt.id <= MAX_ACK_ID):
        raise ProtocolError("bad ack id")
    if kind in (2, 5):
        if not isinstance(pkt.data, list) or not pkt.data or not isinstance(pkt.data[0], str):
            raise ProtocolError("event payload must be an array starting with the event name")
        if pkt.data[0] in RESERVED_EVENTS:
            raise ProtocolError(f"reserved event name {pkt.data[0]!r}")
    if kind == 3 and not isinstance(pkt.data, list):
        raise ProtocolError("ack payload must be an array")
    if kind in (5, 6):
        if not 0 < pkt.attachment_count <= max_attachments:
            raise ProtocolError("attachment count out of range")
        if not _placeholders_valid(pkt.data, pkt.attachment_count):
            raise ProtocolError("binary placeholder out of range")
    if kind == 0:
        if isinstance(pkt.data, msgpack.ExtType) and pkt.data == NOTEPACK_UNDEFINED:
            # socket.io-msgpack-parser (notepack) encodes a missing auth as `undefined`.
            pkt.data = None
        if pkt.data is not None and not isinstance(pkt.data, dict):
            raise ProtocolError("CONNECT payload must be an object")
    return pkt


@dataclass(slots=True)  # one per live socket: no instance dict
class CsrState:
    """A live socket's recovery id (``pid``), sent in the CONNECT reply."""

    pid: str


@dataclass(slots=True)  # one per connection: no instance dict
class TokenBucket:
    rate: float
    burst: float
    tokens: float
    stamp: float

    def take(self) -> bool:
        now = time.monotonic()
        tokens = self.tokens + (now - self.stamp) * self.rate
        self.tokens = tokens if tokens < self.burst else self.burst
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class RealtimeEngine(EngineAdapter):
    """python-engineio's server, made strict where the Engine.IO spec and hostile clients need it.

    - HTTP: an unsupported method or a missing/unknown transport is a 400; a POST body is read
      completely before use (python-engineio's ``read(n)`` on aiohttp can return part of it), an
      oversized one gets 413 at once, one slower than ``body_timeout`` gets 408, one with too
      many packets, an undecodable one or one holding a packet type a client may not send
      (OPEN, PING, unknown) gets 400 and ends the session; a POST answers ``ok``. Every request
      is answered: no path waits for a queue only the client's next poll would drain.
    - A polling client that missed the heartbeat deadline gets 400 on its next request; two
      concurrent GETs on one session end it (the first gets CLOSE alone). A second WebSocket
      for a session that has one is accepted and closed at once.
    - At most ``max_connections_per_ip`` sessions per client address.
    - A session's transport really closes when the session ends; same-origin requests are
      accepted besides the configured CORS allow-list; session ids carry the node's tag.
    """

    socket_class = RealtimeSocket
    runs_websockets = True  # serve() runs a new session's WebSocket (RealtimeSocket.websocket_opened)
    body_timeout = 10.0
    max_packets_per_payload = 256
    max_connections_per_ip = 1000
    max_inflight_events = 32  # inbound packets of one connection waiting for its running handler
    metrics: Metrics | None = None
    backlog: Backlog | None = None  # what may wait for a session; RealtimeServer sets it (None: unbounded)
    # Called with (sid, answered) when a ping is sent (False) and answered (True); RealtimeServer sets it.
    heartbeat: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.requests_in_flight = 0
        self._polling: set[str] = set()
        self._websockets: dict[str, Any] = {}  # sid -> the TCP transport of its WebSocket
        self._per_ip: dict[str, int] = {}
        self._ip_of: dict[str, str] = {}
        self.ping_deadlines, self.pong_deadlines, self.read_deadlines = heartbeat_schedules(self)

    def origins_for(self, environ: dict, allowed: list[str] | None) -> list[str] | None:
        """The configured origins, and the server's own (same-origin requests, behind a proxy too)."""
        if allowed is None or "HTTP_HOST" not in environ:
            return allowed
        scheme = environ.get("HTTP_X_FORWARDED_PROTO", environ.get("wsgi.url_scheme", "http")).split(",")[0].strip()
        host = environ.get("HTTP_X_FORWARDED_HOST", environ["HTTP_HOST"]).split(",")[0].strip()
        return [*allowed, f"{scheme}://{host}", f"{environ.get('wsgi.url_scheme', 'http')}://{environ['HTTP_HOST']}"]

    async def serve(self, request: web.Request) -> web.StreamResponse:
        """Answer one request to the Engine.IO endpoint; counted while in flight (open
        WebSockets and pending polls included), so a request that never ends shows."""
        self.requests_in_flight += 1
        try:
            response = await self._handle(request)
            opened = request.get("rt_websocket")
            if opened is not None:
                # A new session's WebSocket runs here, not at the bottom of python-engineio's
                # call chain (RealtimeSocket.websocket_opened), which has returned by now.
                del request["rt_websocket"]
                socket, ws = opened
                tcp = self._websockets.get(socket.sid)
                try:
                    await socket.run_websocket(ws)
                finally:
                    self._drop_transport(socket.sid, tcp)
                    if socket.closed and self.sockets.get(socket.sid) is socket:
                        del self.sockets[socket.sid]  # as python-engineio's _handle_connect does
            return response
        finally:
            self.requests_in_flight -= 1

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        method, query = request.method, request.query
        if method not in ("GET", "POST", "OPTIONS"):
            return web.Response(status=400, text='"Bad Request"')
        transport = query.get("transport")
        if method != "OPTIONS" and transport not in ("polling", "websocket"):
            return web.Response(status=400, text='"Invalid transport"')
        sid = query.get("sid")
        socket = self.sockets.get(sid) if sid else None
        if sid is None and method == "GET":
            if self._per_ip.get(request.remote or "", 0) >= self.max_connections_per_ip:
                return web.Response(status=429, text='"Too many connections from this address"')
            if transport == "websocket":
                return await self._open_websocket(request)
        if (socket is not None and transport == "websocket"
                and request.headers.get("Upgrade", "").lower() == "websocket"):
            if socket.upgraded or socket.upgrading:
                return await self._close_extra_websocket(request)
            tcp = self._websockets[sid] = request.transport  # an upgrade of this session
            try:
                return await self.library_handle_request(request)
            finally:
                self._drop_transport(sid, tcp)
        if socket is not None and transport == "polling" and not socket.upgraded:
            poll = method == "GET" and request.headers.get("Upgrade", "").lower() != "websocket"
            refusal = await self.check_polling(request, socket, method, poll)
            if refusal is not None:
                return refusal
            if poll:
                self._polling.add(sid)
                try:
                    return await self.library_handle_request(request)
                finally:
                    self._polling.discard(sid)
        return await self.library_handle_request(request)

    async def check_polling(self, request: web.BaseRequest, socket: Any, method: str,
                            poll: bool, body: bytes | None = None) -> web.StreamResponse | None:
        """The refusal, if any, of a request of a live local polling session — the one place
        both paths (this application's and the lean one, server/polling.py) check it: a missed
        heartbeat ends the session (400); a POST's body must keep within its limits (it is read
        here, see :meth:`_read_body`); a long-poll GET while another is pending ends the session
        (400).

        :param poll: the request is a long-poll GET (not a WebSocket upgrade).
        :param body: a POST's whole body when the caller has read it already (server/http_front.py
                     does, within ``body_timeout``); None: read it from ``request`` here."""
        if socket.last_ping and time.time() - socket.last_ping > self.ping_timeout:
            await socket.close(wait=False, abort=True, reason=self.reason.PING_TIMEOUT)
            self.sockets.pop(socket.sid, None)
            return web.Response(status=400, text='"Session timed out"')
        if method == "POST":
            if body is not None:
                return await self._take_body(request, socket, body)
            return await self._read_body(request, socket, body)
        if poll and socket.sid in self._polling:
            socket.queue.put_nowait(eio_packet.Packet(eio_packet.CLOSE))
            await self._end(socket)
            return web.Response(status=400, text='"Overlapping polling requests"')
        return None

    def poll_unrefused(self, socket: Any) -> bool:
        """Whether ``check_polling`` lets a long-poll GET of ``socket`` through (returns None
        without awaiting anything): what server/http_front.py asks before serving one without a
        coroutine. Keep it the negation of check_polling's refusals of a long-poll."""
        last_ping = socket.last_ping
        return not (last_ping and time.time() - last_ping > self.ping_timeout) and socket.sid not in self._polling

    async def _open_websocket(self, request: web.Request) -> web.StreamResponse:
        """A new session that starts on a WebSocket. python-engineio creates the session
        before the WebSocket handshake; when that handshake fails (a bad key, no
        ``Connection: Upgrade``) the session ends here at once, instead of holding a slot of
        its address's ``max_connections_per_ip`` until the connect timeout and after."""
        opened = False
        tcp = request.transport  # None once the connection is lost
        try:
            response = await self.library_handle_request(request)
            opened = True
        finally:
            sid = request.get("rt_sid", "")
            if not (opened and "rt_websocket" in request):  # else serve() runs it, then drops it
                self._drop_transport(sid, tcp)
            created = self.sockets.get(sid)
            if created is not None and not created.connected:  # its WebSocket never opened
                await self._end(created)
                if opened:  # python-engineio answered it as a poll
                    response = web.Response(status=400, text='"Invalid WebSocket handshake"')
        return response

    def _drop_transport(self, sid: str, transport: Any) -> None:
        """Forget the TCP transport recorded for ``sid``'s WebSocket once its request is over
        (each one was kept until the session was forgotten, or for ever when python-engineio
        had dropped the session first)."""
        if self._websockets.get(sid) is transport:
            del self._websockets[sid]

    @staticmethod
    async def _close_extra_websocket(request: web.Request) -> web.StreamResponse:
        """A WebSocket for a session that has one already, or is upgrading to one: the
        handshake completes (101) and the WebSocket is closed at once, as the reference server
        does; the session and its WebSocket carry on."""
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.close()
        return ws

    async def _end(self, socket: Any, reason: Any = None) -> None:
        """End a session refused at the HTTP level, and forget it at once.

        :param reason: the disconnect reason handlers see (default: transport error).
        """
        await socket.close(wait=False, abort=True, reason=reason or self.reason.TRANSPORT_ERROR)
        self.sockets.pop(socket.sid, None)

    async def end_sessions(self, sid: str | None = None) -> None:
        """End one session (or all) without waiting for its queue to drain.

        python-engineio's waits, and only the client's next poll drains a polling session's
        queue: its POST handler, ending a session on a bad packet, waited there forever and
        the request was never answered.
        """
        sockets = [self.sockets.get(sid)] if sid is not None else list(self.sockets.values())
        for socket in sockets:
            if socket is not None:
                await self._end(socket, self.reason.SERVER_DISCONNECT)

    async def _read_body(self, request: web.Request, socket: Any,
                         body: bytes | None = None) -> web.StreamResponse | None:
        if body is None:
            body = await self._receive_body(request, socket)
            if not isinstance(body, bytes):
                return body
        return await self._take_body(request, socket, body)

    async def _receive_body(self, request: web.Request, socket: Any) -> bytes | web.StreamResponse:
        """The body of ``request`` (up to one byte past the limit), or the refusal."""
        length = request.content_length
        if length is not None and length > self.max_http_buffer_size:
            await self._end(socket)
            return web.Response(status=413, text='"Payload too large"', headers={"Connection": "close"})
        try:
            body = await asyncio.wait_for(request.content.read(self.max_http_buffer_size + 1),
                                          self.body_timeout)
            while len(body) <= self.max_http_buffer_size and not request.content.at_eof():
                chunk = await asyncio.wait_for(request.content.read(self.max_http_buffer_size + 1 - len(body)),
                                               self.body_timeout)
                if not chunk:
                    break
                body += chunk
        except asyncio.TimeoutError:
            await self._end(socket)
            return web.Response(status=408, text='"Request body too slow"', headers={"Connection": "close"})
        return body

    async def _take_body(self, request: web.Request, socket: Any, body: bytes) -> web.StreamResponse | None:
        """Check and decode a POST's whole ``body``; its packets go on ``request`` (rt_packets)."""
        if len(body) > self.max_http_buffer_size:
            await self._end(socket)
            return web.Response(status=413, text='"Payload too large"', headers={"Connection": "close"})
        if body.count(b"\x1e") >= self.max_packets_per_payload:
            await self._end(socket)
            return web.Response(status=400, text='"Too many packets in one payload"')
        try:
            text = body.decode("utf-8")
            if "\x1e" in text or not text or text[0] == "d":
                packets = CountedPayload(encoded_payload=text).packets
            else:  # one packet (Payload.decode's result, without its steps)
                packets = [eio_packet.Packet(encoded_packet=text)]
        except Exception:
            await self._end(socket)
            return web.Response(status=400, text='"Undecodable payload"')
        # Checked before any packet is handled, so a refused payload has no effect but the end.
        refused = None
        for pkt in packets:
            if pkt.packet_type not in CLIENT_PACKET_TYPES:
                refused = pkt.packet_type
                break
        if refused is not None:
            log.info("closing %s: Engine.IO packet type %s not allowed from a client", socket.sid, refused)
            await self._end(socket)
            return web.Response(status=400, text='"Packet type not allowed"')
        request["rt_packets"] = packets
        request["rt_body"] = body
        return None

    async def connect_event(self, sid: str, environ: dict) -> Any:
        """``engine_event("connect", sid, environ)`` for a session server/websocket.py created
        (a RealtimeSocket from the start, its OPEN packet right already): this engine's
        bookkeeping, then the handler, called directly (``library_connect_event``)."""
        self._session_began(sid, environ)
        result = await self.library_connect_event(sid, environ)
        self._session_answered(sid, result)
        return result

    def _session_began(self, sid: str, environ: dict) -> None:
        """A new session's bookkeeping, before its connect handler runs."""
        self.count_connection(sid, environ, +1)
        request = environ.get("aiohttp.request")
        if request is not None:
            request["rt_sid"] = sid  # the session this request created
            if request.query.get("transport") == "websocket":
                self._websockets[sid] = request.transport

    def _session_answered(self, sid: str, result: Any) -> None:
        """Undo :meth:`_session_began` when the connect handler's ``result`` refused the session
        (python-engineio's test: anything but None or True); a refused session never has a
        disconnect, which would."""
        if result is not None and result is not True:
            self.count_connection(sid, {}, -1)
            self._websockets.pop(sid, None)

    def _fix_open_packet(self, sid: str) -> None:
        """The handshake advertises ping times in whole milliseconds (python-engineio computes
        ``int(seconds) * 1000``, so 0.3 s became 0). The OPEN packet is still queued when the
        connect event fires: correct it there."""
        socket = self.sockets.get(sid)
        if socket is None:
            return
        for pkt in socket.queue.items():
            if pkt is not None and pkt.packet_type == eio_packet.OPEN and isinstance(pkt.data, dict):
                pkt.data["pingInterval"] = round((self.ping_interval + self.ping_interval_grace_period) * 1000)
                pkt.data["pingTimeout"] = round(self.ping_timeout * 1000)

    def count_connection(self, sid: str, environ: dict, delta: int) -> None:
        """Count a session against its client's address (``delta`` +1 when it starts, -1 when
        it ends). The address is the request's peer, as in the check in ``_handle``
        (python-engineio's aiohttp driver puts 127.0.0.1 in every environ's REMOTE_ADDR)."""
        if delta > 0:
            request = environ.get("aiohttp.request")
            address = (request.remote if request is not None else None) or ""
            self._ip_of[sid] = address
        else:
            address = self._ip_of.pop(sid, None)
            if address is None:
                return
        count = self._per_ip.get(address, 0) + delta
        if count > 0:
            self._per_ip[address] = count
        else:
            self._per_ip.pop(address, None)

    async def engine_event(self, event: str, *args: Any, **kwargs: Any) -> Any:
        """A session's event for the handlers (the session is a RealtimeSocket already:
        EngineAdapter._trigger_event), with this engine's bookkeeping around it."""
        if event == "connect" and len(args) >= 2:
            self._fix_open_packet(args[0])
            self._session_began(args[0], args[1])
        socket = self.sockets.get(args[0]) if event == "disconnect" and args else None
        if event == "disconnect" and args:
            self.count_connection(args[0], {}, -1)
        result = await self.library_trigger_event(event, *args, **kwargs)
        if event == "connect" and len(args) >= 2:
            self._session_answered(args[0], result)
        if socket is not None:
            # A pending long-poll GET is answered with a NOOP (the spec; python-engineio leaves
            # it hanging) unless something already queued answers it (the CLOSE that ends
            # overlapping polls goes alone, as the spec wants), and the WebSocket writer ends,
            # which closes the WebSocket (the JS client ignores an Engine.IO CLOSE packet on a
            # WebSocket).
            if not socket.upgraded and socket.queue.empty():
                socket.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))
            socket.queue.put_nowait(None)
            # python-engineio forgets a closed session only when another request for it comes;
            # a client that never comes back would leave it behind. A client that closed needs
            # nothing more; otherwise leave a pending poll time to read the CLOSE packet.
            closed_by_client = getattr(socket, "closed_by_client", False) or \
                (len(args) > 1 and args[1] == self.reason.CLIENT_DISCONNECT)
            asyncio.get_running_loop().call_later(0 if closed_by_client else self.ping_timeout + 1,
                                                  self._forget, socket)
        return result

    def _forget(self, socket: Any) -> None:
        if self.sockets.get(socket.sid) is socket and socket.closed:
            del self.sockets[socket.sid]
            self._websockets.pop(socket.sid, None)

    def abort_transport(self, sid: str) -> None:
        """Drop a session's TCP connection now: its writer may be stuck sending to a client
        that does not read, and would never notice a close."""
        transport = self._websockets.pop(sid, None)
        if transport is not None and not transport.is_closing():
            transport.abort()
        socket = self.sockets.get(sid)
        if socket is not None and socket.closed:
            self._forget(socket)


class RealtimeServer(ServerAdapter):
    """AsyncServer with recovery, limits and strict packet checks.

    :param sessions: where sessions of recoverably disconnected sockets wait.
    :param max_disconnection_duration: seconds such a session is kept.
    :param limits: the ``[limits]`` configuration section.
    :param metrics: counters to update.
    :param connect_timeout: seconds an Engine.IO session may stay without joining a namespace.
    :param bus: tells the other nodes to close a session taken over here; None without Redis.
    :param kwargs: python-socketio's and python-engineio's options.
    """

    engine_class = RealtimeEngine

    def __init__(self, *, manager: RealtimeManager, sessions: SessionStore, max_disconnection_duration: float,
                 limits: Any, metrics: Metrics, connect_timeout: float = 45.0, bus: Bus | None = None,
                 **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.rt_manager = manager
        self.sessions = sessions
        self.max_disconnection_duration = max_disconnection_duration
        self.limits = limits
        self.metrics = metrics
        self.connect_timeout = connect_timeout
        self.shutting_down = False
        self.csr: dict[tuple[str, str], CsrState] = {}
        self.pids: dict[str, tuple[str, str]] = {}
        self.recovered: set[tuple[str, str]] = set()
        # pids whose socket was closed because the client came back on a new connection:
        # their session was taken, so closing the old socket must not save it again.
        self.evicted: set[str] = set()
        self.bus = bus
        self._buckets: dict[str, TokenBucket] = {}
        self._operator_buckets: dict[str, TokenBucket] = {}  # eio sid -> bucket, once it sent an /admin event
        self._upgraded: set[str] = set()
        self._connects: dict[str, Any] = {}  # namespace -> its connects counter (served ones only)
        self._on_connect: dict[str, Any] = {}  # namespace -> its on_connect, see _connect_handler
        # Sockets whose session is to be saved soon, in one batch (see _save_soon).
        self._to_save: set[tuple[str, str]] = set()
        self._save_timer: asyncio.TimerHandle | None = None
        self._saving: set[asyncio.Task] = set()
        # Saves fail together (Redis away, or gone before a node that is shutting down has
        # ended its sockets): one warning per interval, with how many were left unsaid.
        self._save_failures = Throttled(log)
        # eio sid -> when it must have joined a namespace, in that order (see _sweep_joining)
        self._joining: dict[str, float] = {}
        self._joining_timer: asyncio.TimerHandle | None = None
        # Reasons a disconnect keeps the session: the client's link failed (as Node's
        # RECOVERABLE_DISCONNECT_REASONS), or a recoverable server-initiated Ending.
        self._recoverable = {self.reason.TRANSPORT_CLOSE, self.reason.TRANSPORT_ERROR, self.reason.PING_TIMEOUT,
                             *(e.reason for e in ENDINGS.values() if e.recoverable)}
        # Every packet to a session, whichever path it takes (acks, fan-out, replays, pings),
        # passes the same bounds; RealtimeSocket and RealtimeManager.write consult them.
        self.eio.backlog = Backlog(limits.send_queue_max, limits.send_queue_max_bytes, self.cut_slow_consumer)
        self.eio.heartbeat = self._heartbeat
        self._binary_serial = itertools.count()

    def is_recoverable(self, reason: str | None) -> bool:
        """Whether a disconnect with ``reason`` keeps the session for recovery: transport
        close/error, ping timeout, or a recoverable :class:`Ending` (drain, shutdown, slow consumer)."""
        return reason in self._recoverable

    def _heartbeat(self, eio_sid: str, answered: bool) -> None:
        for namespace in self.rt_manager.durable:
            sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
            if sid is not None:
                self.rt_manager.heartbeat(namespace, sid, answered)

    def is_recovered(self, sid: str, namespace: str) -> bool:
        return (namespace, sid) in self.recovered

    # ------------------------------------------------------------------ incoming packets

    async def eio_connected(self, eio_sid: str, environ: dict) -> None:
        self.library_handle_eio_connect(eio_sid, environ)
        request = environ.get("aiohttp.request")
        if request is not None and self.environ.get(eio_sid) is environ:
            # Kept for the session's life, read by almost nobody: rebuilt when read instead.
            translate = lean_environ if isinstance(request, LeanRequest) else self.eio._async["translate_request"]
            self.environ[eio_sid] = SessionEnviron(request, translate)
        socket = self.eio.sockets.get(eio_sid)
        if socket is not None:
            # Counted as an upgrade later only if the session began on long-polling.
            socket.transport_started_as_polling = environ.get("QUERY_STRING", "").find("transport=polling") >= 0
        loop = asyncio.get_running_loop()
        self._joining[eio_sid] = loop.time() + self.connect_timeout
        if self._joining_timer is None:
            self._joining_timer = loop.call_later(self.connect_timeout, self._sweep_joining)

    def _sweep_joining(self) -> None:
        """Check the sessions whose ``connect_timeout`` has passed (:meth:`_check_joined`), then
        sleep until the next one's: one timer for all sessions instead of one each (a
        TimerHandle, its context and arguments: about 250 bytes a session for 45 s). A
        session leaves ``_joining`` when it joins a namespace or ends."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._joining_timer = None
        while self._joining:
            eio_sid, deadline = next(iter(self._joining.items()))  # in order: one timeout for all
            if deadline > now:
                self._joining_timer = loop.call_at(deadline, self._sweep_joining)
                return
            del self._joining[eio_sid]
            self._check_joined(eio_sid)

    def _check_joined(self, eio_sid: str) -> None:
        if eio_sid not in self.environ:
            return
        if any(self.manager.sid_from_eio_sid(eio_sid, ns) for ns in list(self.manager.get_namespaces())):
            return
        log.info("closing %s: no namespace joined within %ss", eio_sid, self.connect_timeout)
        asyncio.get_running_loop().create_task(self._close_eio(eio_sid, "connect timeout", CONNECT_TIMEOUT))

    async def end(self, eio_sid: str, ending: Ending, namespace: str | None = None) -> None:
        """End a client's socket: every server-initiated end goes through here.

        Whatever the path, the socket's disconnect is then handled by :meth:`disconnect_namespace`,
        which keeps the saved session when ``ending`` is recoverable and forgets it otherwise.

        :param eio_sid: the client's Engine.IO session.
        :param ending: why, which says whether the session is kept for recovery.
        :param namespace: end only the socket in this namespace: the client gets a DISCONNECT
                          packet ("io server disconnect", it does not reconnect by itself) and
                          keeps its connection. None: close the whole connection, every namespace.
        """
        if namespace is None:
            await self.close_transport(eio_sid, ending.reason, send_close=ending.send_close, abort=ending.abort)
            return
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is None or not self.manager.is_connected(sid, namespace):
            return
        await self._send_packet(eio_sid, self.packet_class(sio_packet.DISCONNECT, namespace=namespace))
        await self.disconnect_namespace(eio_sid, namespace, ending.reason)

    async def disconnect_socket(self, sid: str, namespace: str | None = None,
                                ending: Ending = SERVER_DISCONNECTED) -> None:
        """python-socketio's server-side disconnect of one socket, as :meth:`end` (python-socketio's
        own skips :meth:`disconnect_namespace`, so the saved session would outlive the socket).

        :param ending: why; not recoverable unless said otherwise.
        """
        namespace = namespace or "/"
        eio_sid = self.manager.eio_sid_from_sid(sid, namespace)
        if eio_sid is not None:
            await self.end(eio_sid, ending, namespace)

    async def close_transport(self, eio_sid: str, reason: str, send_close: bool = False,
                              abort: bool = False) -> None:
        """Close an Engine.IO session and its WebSocket now (the mechanics of :meth:`end`).

        :param send_close: send the Engine.IO CLOSE packet first (polling clients read it).
        :param abort: also drop the TCP connection at once (a client that does not read).
        """
        socket = self.eio.sockets.get(eio_sid)
        if socket is None or socket.closed:
            return
        # RealtimeEngine ends the transport once the session is closed.
        await socket.close(wait=False, abort=not send_close, reason=reason)
        if abort:
            self.eio.abort_transport(eio_sid)

    def cut_slow_consumer(self, eio_sid: str) -> None:
        """Disconnect a session whose backlog passed a bound, recoverably (it recovers what it
        missed when it reconnects), and drop its TCP connection: it does not read, so it would
        never see a close, and what waits for it is freed at once. Called once per session
        (Backlog marks it)."""
        self.metrics.slow_consumers.inc()
        asyncio.get_running_loop().create_task(self.end(eio_sid, SLOW_CONSUMER))

    async def _close_eio(self, eio_sid: str, kind: str, ending: Ending = PROTOCOL_ERROR) -> None:
        self.metrics.protocol_errors.labels(kind).inc()
        await self.end(eio_sid, ending)

    async def eio_message(self, eio_sid: str, data: Any) -> None:
        metrics = self.metrics
        metrics.bytes_in.value += len(data)  # plain numbers, read at scrape time (server/metrics.py)
        if eio_sid not in self._upgraded:
            socket = self.eio.sockets.get(eio_sid)
            if socket is not None and socket.upgraded:
                self._upgraded.add(eio_sid)
                if socket.transport_started_as_polling:
                    metrics.upgrades.inc()
        try:
            if eio_sid in self._binary_packet:
                return await self._attachment(eio_sid, data)
            # parse_client_packet, with an EVENT's checks (check_client_packet's) inline
            pkt = self.packet_class(encoded_packet=data)
            if pkt.packet_type != 2:
                return await self._dispatch(eio_sid, check_client_packet(pkt, self.limits.max_attachments), len(data))
            problem = check_event(pkt, MAX_NAMESPACE_LENGTH, MAX_ACK_ID, RESERVED_EVENTS)
            if problem is not None:
                raise ProtocolError(problem)
            # A text EVENT, the common packet: python-socketio's _handle_event →
            # _handle_event_internal → _trigger_event, and our _dispatch, _refuse_event and
            # _handle_class_event, folded into this one frame (same checks, same order).
            namespace = pkt.namespace or "/"
            manager = self.manager
            sid = manager.sid_from_eio_sid(eio_sid, namespace)
            if not sid:
                raise ProtocolError(f"packet for namespace {namespace} before CONNECT")
            try:
                metrics.events_in.counts[namespace] += 1
            except KeyError:  # the namespace's first event
                metrics.events_in.labels(namespace).inc()
            size = len(data)
            if size > self.limits.max_event_bytes:
                refusal: str | None = "payload_too_large"
            elif namespace != OPERATOR_NAMESPACE and (bucket := self._buckets.get(eio_sid)) is not None:
                # TokenBucket.take, inline
                now = time.monotonic()
                tokens = bucket.tokens + (now - bucket.stamp) * bucket.rate
                if tokens > bucket.burst:
                    tokens = bucket.burst
                bucket.stamp = now
                if tokens >= 1:
                    bucket.tokens = tokens - 1
                    refusal = None
                else:
                    bucket.tokens = tokens
                    refusal = "rate_limited"
            else:
                refusal = self._refuse_event(eio_sid, size, namespace)
            args = pkt.data
            if refusal is not None:
                return await self._refuse(eio_sid, namespace, pkt.id, refusal, args[0])
            handler = self.namespace_handlers.get(namespace)
            if handler is None or self.handlers:
                return await self._handle_event(eio_sid, namespace, pkt.id, args)
            # AsyncManager.is_connected, inline: the sid was just found in the namespace, so
            # only a connect or disconnect under way makes it not connected.
            pending = manager.pending_connect
            if pending and namespace in pending and sid in pending[namespace]:
                return None
            pending = manager.pending_disconnect
            if pending and namespace in pending and sid in pending[namespace]:
                return None
            try:
                result = await handler.trigger_event(args[0], sid, *args[1:])
            except Exception as exc:
                # Never a silent failure: the client's ack says what happened.
                result = self._handler_failed(namespace, args[0], exc)
            ack_id = pkt.id
            if ack_id is not None:
                await self._send_ack(eio_sid, namespace, ack_id, result)
        except ProtocolError as exc:
            log.info("closing %s: %s", eio_sid, exc)
            await self._close_eio(eio_sid, "malformed")
        except DECODE_ERRORS as exc:
            log.info("closing %s: undecodable packet (%s)", eio_sid, exc.__class__.__name__)
            await self._close_eio(eio_sid, "undecodable")
        return None

    async def _send_ack(self, eio_sid: str, namespace: str, ack_id: int, result: Any) -> None:
        """Send the ACK of an event: ``result`` is what its handler returned. A text ack to a
        session whose WebSocket can take it now is written here (RealtimeSocket.write_text),
        without the Engine.IO packet and the three calls of the general way."""
        # normalize_args, for the usual ack (an object: one argument) without its call
        args = [result] if result.__class__ is dict else normalize_args(result)
        # The ACK's text without the packet object; None for a BINARY_ACK or msgpack's bytes.
        encoded = ack_text(self.packet_class, namespace, ack_id, args)
        if encoded is not None:
            socket = self.eio.sockets.get(eio_sid)
            if isinstance(socket, RealtimeSocket) and socket.write_text(encoded):
                return
        await self._send_packet(eio_sid, self.packet_class(sio_packet.ACK, namespace=namespace, id=ack_id, data=args))

    async def _dispatch(self, eio_sid: str, pkt: Any, size: int) -> None:
        """A decoded packet other than a text EVENT (see :meth:`eio_message`)."""
        kind = pkt.packet_type
        namespace = pkt.namespace or "/"
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace) if kind != 0 else None
        if kind != 0 and not sid:
            raise ProtocolError(f"packet for namespace {namespace} before CONNECT")
        if kind == 5:
            try:
                self.metrics.events_in.counts[namespace] += 1
            except KeyError:
                self.metrics.events_in.labels(namespace).inc()
            return self._await_attachments(eio_sid, pkt, size, self._refuse_event(eio_sid, size, namespace))
        if kind == 0:
            return await self._connect_or_refuse(eio_sid, namespace, pkt.data)
        if kind == 1:
            return await self.disconnect_namespace(eio_sid, namespace, self.reason.CLIENT_DISCONNECT)
        if kind == 3:
            return await self._handle_ack(eio_sid, namespace, pkt.id, pkt.data)
        return self._await_attachments(eio_sid, pkt, size, self._refuse_size(size))

    def _handler_failed(self, namespace: str, event: str, exc: BaseException) -> dict[str, Any]:
        """The error ack for a handler that raised: ``unavailable`` when shared state could not
        be reached (the client may retry, with the same eventId), ``internal`` otherwise."""
        code = "unavailable" if isinstance(exc, STORE_ERRORS) else "internal"
        if code == "unavailable":
            log.warning("%s %s failed, store unavailable: %s", namespace, event, exc)
        else:
            log.error("%s %s handler failed", namespace, event, exc_info=exc)
        self.metrics.handler_errors.labels(namespace, code).inc()
        message = "temporarily unavailable, retry" if code == "unavailable" else "internal error"
        return {"ok": False, "error": {"code": code, "message": message}}

    async def _connect_or_refuse(self, eio_sid: str, namespace: str, data: Any) -> None:
        """CONNECT; when a store fails on the way the client gets a CONNECT_ERROR saying so
        (``err.data.code == "unavailable"``) instead of no answer at all."""
        try:
            await self.connect_namespace(eio_sid, namespace, data)
        except Exception as exc:
            namespace = namespace or "/"
            self._handler_failed(namespace, "connect", exc)
            sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
            if sid is not None:
                self.rt_manager.release(namespace, sid, None)
                self.recovered.discard((namespace, sid))
                state = self.csr.pop((namespace, sid), None)
                if state is not None:
                    self.pids.pop(state.pid, None)
                await self.rt_manager.disconnect(sid, namespace, ignore_queue=True)
            await self._send_packet(eio_sid, self.packet_class(
                sio_packet.CONNECT_ERROR, namespace=namespace,
                data={"message": "temporarily unavailable, retry", "data": {"code": "unavailable"}}))

    def _await_attachments(self, eio_sid: str, pkt: Any, size: int, refusal: str | None) -> None:
        """Hold a binary packet (event or ack) for its attachments, for ``attachment_timeout``
        at most and for ``max_event_bytes`` at most: the packet and its attachments count
        together, as they arrive (:meth:`_attachment`).

        :param size: the length of the packet itself.
        :param refusal: why the event is already refused (its attachments will only be counted).
        """
        pkt.rt_size = size
        pkt.rt_received = 0
        pkt.rt_refused = refusal
        # The timer knows the packet by a number: holding the packet itself would keep its
        # attachments alive until it fires, even after the packet was completed or replaced.
        pkt.rt_serial = serial = next(self._binary_serial)
        self._binary_packet[eio_sid] = pkt
        asyncio.get_running_loop().call_later(self.limits.attachment_timeout, self._drop_partial, eio_sid, serial)

    def _drop_partial(self, eio_sid: str, serial: int) -> None:
        pkt = self._binary_packet.get(eio_sid)
        if pkt is not None and pkt.rt_serial == serial:
            log.info("dropping partial binary packet of %s", eio_sid)
            del self._binary_packet[eio_sid]
            self.metrics.protocol_errors.labels("partial_binary").inc()

    async def _attachment(self, eio_sid: str, data: Any) -> None:
        """One attachment of the binary packet held for ``eio_sid``. Once the packet and its
        attachments together pass ``max_event_bytes`` the event is refused: what was kept is
        dropped, the rest is only counted off the wire, then it is answered like a text event
        over the cap (a binary ack over the cap is dropped)."""
        pkt = self._binary_packet[eio_sid]
        pkt.rt_size += len(data)
        pkt.rt_received += 1
        if pkt.rt_refused is None:
            pkt.rt_refused = self._refuse_size(pkt.rt_size)
            if pkt.rt_refused is None:
                # python-socketio keeps it, and handles the event once the last one is in.
                return await self.library_handle_eio_message(eio_sid, data)
            pkt.attachments.clear()
        if pkt.rt_received < pkt.attachment_count:
            return None
        del self._binary_packet[eio_sid]
        if pkt.packet_type == sio_packet.BINARY_EVENT:
            await self._refuse(eio_sid, pkt.namespace or "/", pkt.id, pkt.rt_refused, pkt.data[0])
        else:
            log.debug("dropping binary ack of %s over max_event_bytes", eio_sid)
        return None

    def _refuse_size(self, size: int) -> str | None:
        return "payload_too_large" if size > self.limits.max_event_bytes else None

    def _refuse_event(self, eio_sid: str, size: int, namespace: str = "/") -> str | None:
        refusal = self._refuse_size(size)
        if refusal is not None:
            return refusal
        if namespace == OPERATOR_NAMESPACE:
            bucket = self._operator_buckets.get(eio_sid)
            if bucket is None:
                rate, burst = self.limits.operator_events_per_second, self.limits.operator_event_burst
                bucket = self._operator_buckets[eio_sid] = TokenBucket(rate, burst, burst, time.monotonic())
        else:
            bucket = self._buckets.get(eio_sid)
            if bucket is None and eio_sid in self.environ:
                # Made at the session's first event, full: as one made when the session began
                # would be by then (it refills up to its burst); idle sessions keep none.
                rate, burst = self.limits.events_per_second, self.limits.event_burst
                bucket = self._buckets[eio_sid] = TokenBucket(rate, burst, burst, time.monotonic())
        if bucket is not None and not bucket.take():
            return "rate_limited"
        return None

    async def _refuse(self, eio_sid: str, namespace: str, ack_id: int | None, code: str, event: Any = None) -> None:
        if code == "rate_limited":
            self.metrics.rate_limited.labels(namespace).inc()
        if namespace == OPERATOR_NAMESPACE:
            operators = self.namespace_handlers.get(namespace)
            if operators is not None:
                operators.command_refused(self.manager.sid_from_eio_sid(eio_sid, namespace), event, code)
        if ack_id is not None:
            await self._send_packet(eio_sid, self.packet_class(
                sio_packet.ACK, namespace=namespace, id=ack_id,
                data=[{"ok": False, "error": {"code": code, "message": code.replace("_", " ")}}]))

    # ------------------------------------------------------------------ connect with recovery

    async def connect_namespace(self, eio_sid: str, namespace: str, data: Any) -> None:
        namespace = namespace or "/"
        if namespace not in self.namespace_handlers and namespace not in self.handlers:
            await self._send_packet(eio_sid, self.packet_class(
                sio_packet.CONNECT_ERROR, data={"message": "Invalid namespace"}, namespace=namespace))
            return
        if self.shutting_down:
            await self._send_packet(eio_sid, self.packet_class(
                sio_packet.CONNECT_ERROR, data={"message": "server shutting down"}, namespace=namespace))
            return
        auth = data if isinstance(data, dict) else {}
        csr = namespace in self.rt_manager.durable
        session: SavedSession | None = None
        if csr and isinstance(auth.get("pid"), str) and len(auth["pid"]) <= 64:
            session = await self._take_session(namespace, auth["pid"])
        sid = await self.rt_manager.admit(eio_sid, namespace, sid=session.sid if session else None)
        if sid is None and session is not None:
            session = None
            sid = await self.rt_manager.admit(eio_sid, namespace)
        if sid is None:
            await self._send_packet(eio_sid, self.packet_class(
                sio_packet.CONNECT_ERROR, data={"message": "Unable to connect"}, namespace=namespace))
            return

        missed = None
        if session is not None:
            missed = await self._begin_recovery(namespace, sid, session, auth.get("offset"))
            if missed is None:
                session = None
                await self.rt_manager.disconnect(sid, namespace, ignore_queue=True)
                sid = await self.rt_manager.admit(eio_sid, namespace)
        if csr and session is None and isinstance(auth.get("pid"), str):
            self.metrics.recoveries.labels(namespace, "failed").inc()

        fail: Any = None
        try:
            on_connect = self._connect_handler(namespace)
            if on_connect is not None:
                try:
                    ok = await on_connect(sid, self.environ[eio_sid], data)
                except asyncio.CancelledError:  # as python-socketio's AsyncNamespace.trigger_event
                    ok = None
            else:
                ok = await self._trigger_event("connect", namespace, sid, self.environ[eio_sid], data)
        except exceptions.ConnectionRefusedError as exc:
            ok, fail = False, exc.error_args
        if ok is False:
            fail = fail or {"message": "Connection refused by server"}
            self.metrics.connect_refused.labels(namespace, str(fail.get("message", ""))[:40]).inc()
            self.rt_manager.release(namespace, sid, None, {})
            self.recovered.discard((namespace, sid))
            await self._send_packet(eio_sid, self.packet_class(
                sio_packet.CONNECT_ERROR, data=fail, namespace=namespace))
            await self.rt_manager.disconnect(sid, namespace, ignore_queue=True)
            return

        reply: dict[str, Any] = {"sid": sid}
        if csr:
            state = await self._csr_state(namespace, sid, session)
            reply["pid"] = state.pid
        if missed is not None:
            self.rt_manager.replay(namespace, sid, eio_sid, missed)
            self.metrics.recoveries.labels(namespace, "recovered").inc()
            self.metrics.replayed.labels(namespace).inc(len(missed))
        written = self.rt_manager.log.subscriptions_written() if csr else None
        if written is not None:
            # The reply makes the socket's own room (and a new guest's user room) known, and
            # those were subscribed without waiting (RealtimeManager._open_new): they are
            # written to Redis first (a publication from elsewhere then finds them; on a
            # connection still being made they get a resync instead).
            await written
        await self._send_packet(eio_sid, self.packet_class(sio_packet.CONNECT, reply, namespace=namespace))
        await self.rt_manager.connect(sid, namespace)
        self._joining.pop(eio_sid, None)  # it joined one: no connect timeout any more
        counter = self._connects.get(namespace)
        if counter is None:  # labels() costs four times the inc() it is for
            counter = self._connects[namespace] = self.metrics.connects.labels(namespace)
        counter.inc()
        if csr:
            self._save_soon(namespace, sid)

    def _connect_handler(self, namespace: str) -> Any:
        """The ``on_connect`` coroutine method of ``namespace``'s class, when python-socketio's
        ``_trigger_event`` would come to it (a namespace class, no decorator handlers): called
        directly, a connect skips its handler look-ups and the ``inspect`` checks on the way
        (about 25 calls). None: go through ``_trigger_event``."""
        if namespace in self._on_connect:
            return self._on_connect[namespace]
        handler = self.namespace_handlers.get(namespace)
        method = getattr(handler, "on_connect", None) if handler is not None and not self.handlers else None
        if method is not None and not inspect.iscoroutinefunction(method):
            method = None
        self._on_connect[namespace] = method
        return method

    async def evict(self, pid: str) -> bool:
        """Close the socket holding ``pid`` on this node without saving its session again.

        Used when its client has come back on a new connection: the old one is half-dead
        (a polling client whose request was cut is not noticed before the ping timeout)."""
        live = self.pids.get(pid)
        if live is None:
            return False
        namespace, sid = live
        eio_sid = self.manager.eio_sid_from_sid(sid, namespace)
        socket = self.eio.sockets.get(eio_sid) if eio_sid else None
        self.evicted.add(pid)
        try:
            if socket is not None and not socket.closed:
                await self.end(eio_sid, EVICTED)
            else:
                await self.disconnect_namespace(eio_sid, namespace, EVICTED.reason)
        finally:
            self.evicted.discard(pid)
        return True

    async def _take_session(self, namespace: str, pid: str) -> SavedSession | None:
        session = await self.sessions.take(pid)
        live = self.pids.get(pid)
        if live is not None:
            # Its socket is still open here (a polling client whose request was cut is noticed
            # only at the ping timeout): its state now, trail included, beats the stored one.
            state = self.csr.get(live)
            if state is not None and self.manager.is_connected(live[1], live[0]):
                session = self._snapshot(live[0], live[1], state, with_trail=True)
            await self.evict(pid)
        elif session is not None and self.bus is not None:
            # The old socket may still be open on another node: have it closed there.
            await self.bus.publish("evict", {"pid": pid})
        if session is None or session.namespace != namespace:
            return None
        # The namespace re-checks who the session belonged to (not revoked, token not expired
        # since): a session it refuses is dropped here, and the client connects afresh.
        may_recover = getattr(self.namespace_handlers.get(namespace), "may_recover", None)
        if may_recover is not None and not may_recover(session.data):
            return None
        return session

    async def _begin_recovery(self, namespace: str, sid: str, session: SavedSession, offset: Any):
        """Rejoin rooms, hold live packets, read what was missed. None: recovery impossible."""
        try:
            missed = await self.rt_manager.recover(namespace, sid, session.positions, session.trail, offset)
        except Exception as exc:
            log.warning("recovery read failed for %s: %s", sid, exc)
            missed = None
        if missed is None:
            self.rt_manager.release(namespace, sid, None, {})
            return None
        await self.save_session(sid, session.data, namespace=namespace)
        self.recovered.add((namespace, sid))
        return missed

    async def _csr_state(self, namespace: str, sid: str, session: SavedSession | None) -> CsrState:
        state = CsrState(session.pid if session is not None else randomness.token_urlsafe(15))
        key = (namespace, sid)  # one tuple for both maps
        self.csr[key] = state
        self.pids[state.pid] = key
        return state

    # ------------------------------------------------------------------ disconnect

    async def disconnect_namespace(self, eio_sid: str, namespace: str, reason: str | None = None) -> None:
        namespace = namespace or "/"
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        state = self.csr.pop((namespace, sid), None) if sid else None
        forget = None
        if state is not None:
            self.pids.pop(state.pid, None)
            if state.pid in self.evicted:
                pass
            elif self.is_recoverable(reason) and self.manager.is_connected(sid, namespace):
                # Needs the rooms and the trail: before they are left.
                await self._save(namespace, sid, state, with_trail=True)
            else:
                forget = state.pid
        try:
            # Reached without waiting when the client disconnected: python-socketio marks the
            # socket as leaving before the transport's close (often the very next frame) can
            # end it again with "transport close".
            await self.library_handle_disconnect(eio_sid, namespace, reason)
        finally:
            self.recovered.discard((namespace, sid))
        if forget is not None:
            # A deliberate disconnect is not recoverable: forget the saved session.
            try:
                await self.sessions.take(forget)
            except Exception as exc:
                log.debug("could not drop session %s: %s", forget, exc)

    def _snapshot(self, namespace: str, sid: str, state: CsrState, with_trail: bool = False) -> SavedSession:
        data = self._session_data(namespace, sid)
        saved_state = getattr(self.namespace_handlers.get(namespace), "saved_state", None)
        if saved_state is not None:
            data.update(saved_state(sid))
        positions, trail = self.rt_manager.snapshot(namespace, sid, with_trail)
        return SavedSession(sid=sid, pid=state.pid, namespace=namespace, data=data,
                            positions=positions, trail=trail)

    def _session_data(self, namespace: str, sid: str) -> dict[str, Any]:
        """A copy of the socket's python-socketio session (empty when it has none): read
        without python-socketio's get_session, which creates an empty one for every socket."""
        eio_sid = self.manager.eio_sid_from_sid(sid, namespace)
        socket = self.eio.sockets.get(eio_sid) if eio_sid else None
        session = socket.session.get(namespace) if socket is not None else None
        return dict(session) if session else {}

    async def _save(self, namespace: str, sid: str, state: CsrState, with_trail: bool = False) -> None:
        try:
            await self.sessions.save(self._snapshot(namespace, sid, state, with_trail),
                                     self.max_disconnection_duration)
        except Exception as exc:
            self._save_failures.warning("could not save session of %s for recovery: %s", sid, exc)

    async def save_session_of(self, namespace: str, sid: str) -> None:
        """Save a live socket's session now (it connected, or its rooms changed), when the
        session store outlives this node (else it is saved when the socket ends)."""
        if not self.sessions.outlives_node:
            return
        state = self.csr.get((namespace, sid))
        if state is not None and self.manager.is_connected(sid, namespace):
            await self._save(namespace, sid, state)

    def _save_soon(self, namespace: str, sid: str) -> None:
        """Save a socket's session within ``SAVE_BATCH_DELAY``, in one pipeline with the other
        sockets' that connected meanwhile (a connect storm: one round trip per batch, not per
        connect), when the session store outlives this node. For the save after a CONNECT,
        which its reply does not wait for anyway."""
        if not self.sessions.outlives_node:
            return
        self._to_save.add((namespace, sid))
        if self._save_timer is None:
            self._save_timer = asyncio.get_running_loop().call_later(SAVE_BATCH_DELAY, self._start_saves)

    def _start_saves(self) -> None:
        self._save_timer = None
        keys, self._to_save = self._to_save, set()
        task = asyncio.get_running_loop().create_task(self._save_batch(keys), name="session-saves")
        self._saving.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self._saving.discard)

    async def _save_batch(self, keys: set[tuple[str, str]]) -> None:
        snapshots = []
        for namespace, sid in keys:
            state = self.csr.get((namespace, sid))
            if state is not None and self.manager.is_connected(sid, namespace):
                snapshots.append(self._snapshot(namespace, sid, state))
        if snapshots:
            try:
                await self.sessions.save_many(snapshots, self.max_disconnection_duration)
            except Exception as exc:
                self._save_failures.warning("could not save %d sessions for recovery: %s", len(snapshots), exc)

    async def session_heartbeat(self) -> None:
        """Keep every live socket's session saved, so it outlives a crash of this node (not
        needed when the store would not outlive it: it returns at once then)."""
        if not self.sessions.outlives_node:
            return
        while True:
            await asyncio.sleep(max(1.0, self.max_disconnection_duration / 3))
            items = list(self.csr.items())
            snapshots = []
            for (namespace, sid), state in items:
                if self.manager.is_connected(sid, namespace):
                    snapshots.append(self._snapshot(namespace, sid, state))
            for i in range(0, len(snapshots), 500):
                try:
                    await self.sessions.save_many(snapshots[i:i + 500], self.max_disconnection_duration)
                except Exception as exc:
                    log.warning("session heartbeat failed: %s", exc)
                    break

    async def eio_disconnected(self, eio_sid: str, reason: str) -> None:
        self._joining.pop(eio_sid, None)
        self._buckets.pop(eio_sid, None)
        self._operator_buckets.pop(eio_sid, None)
        self._upgraded.discard(eio_sid)
        await self.library_handle_eio_disconnect(eio_sid, reason)

