"""The lean WebSocket: a new session's WebSocket served by our own asyncio Protocol.

Through aiohttp, every open WebSocket kept its ``RequestHandler`` (with a ``start()`` Task
suspended for the connection's life), a ``WebSocketResponse``, its reader, a
``FlowControlDataQueue``, a writer, and our read loop suspended in ``ws.receive()``: about half
of an idle connection's memory, and most of the per-frame and per-connect work. For the common
request — a new session opening an uncompressed WebSocket — :func:`take_websocket` (called from
server/polling.py's ``PollingFront.handle``, before the application) creates the Engine.IO
session as python-engineio's ``_handle_connect`` does, answers ``101 Switching Protocols``
itself, detaches aiohttp's ``RequestHandler`` from the TCP transport without closing it, and
makes a :class:`WebSocketConnection` the transport's protocol: no Task and no coroutine per idle
connection, the frames parsed by server/codec.py's ``FrameParser`` (compiled), every message
handled by ``RealtimeSocket.read_message`` as on the aiohttp path.

Anything else (an upgrade from polling, compression on, a request that is odd in any way, a
refused origin, an address at its connection limit, a server shutting down) goes to the
application as before, which answers it exactly as it did.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
from collections.abc import Mapping
from typing import Any, Awaitable, Callable

from aiohttp import web
from engineio import packet as eio_packet

from ._codec_pure import server_frame
from .codec import FrameParser, text_frame
from .eager import start_eagerly
from .engine_socket import RealtimeSocket

log = logging.getLogger("server.websocket")

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455's, for Sec-WebSocket-Accept
TEXT, BINARY, CLOSE, PING, PONG = 1, 2, 8, 9, 10
NORMAL, PROTOCOL_ERROR, INVALID_DATA = 1000, 1002, 1007
# After our close frame, how long the client has to answer with its own before we hang up.
CLOSE_WAIT = 2.0
# Close codes a client may send (RFC 6455 7.4; 1004-1006 and 1015 are never sent on the wire).
_CLIENT_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


def accept_key(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` answering the client's ``Sec-WebSocket-Key`` ``key``."""
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def binary_frame(data: bytes) -> bytes:
    """The server-to-client (unmasked) binary frame of ``data`` (binary packets are rare: the
    pure-Python frame builder serves them whether or not the codec is compiled)."""
    return server_frame(0x82, data)


def control_frame(opcode: int, payload: bytes = b"") -> bytes:
    """An unmasked control frame (``payload`` at most 125 bytes)."""
    return bytes((0x80 | opcode, len(payload))) + payload


def _valid_key(key: str | None) -> bool:
    if not key:
        return False
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


def _shutting_down(engine: Any) -> bool:
    """Whether the server is shutting down (RealtimeServer's flag; the engine's connect
    handler is bound to it)."""
    owner = getattr(engine.handlers.get("connect"), "__self__", None)
    return bool(getattr(engine, "shutting_down", False) or getattr(owner, "shutting_down", False))


def acceptable(engine: Any, params: Mapping[str, str], headers: Any, remote: str) -> bool:
    """Whether a GET to the Engine.IO path opens a new session's WebSocket that this module
    serves (see the module docstring); the origin is checked by :func:`cors_of`.

    :param engine: the Engine.IO server (a RealtimeEngine).
    :param params: the request's query parameters.
    :param headers: its headers, read by lower-case name with ``get`` (aiohttp's or
        server/lean_request.py's ``Headers``).
    :param remote: the client's address (its connection limit).
    """
    if not getattr(engine, "lean_websocket", True) or engine.websocket_compression:
        return False
    if "websocket" not in engine.transports or not issubclass(engine.socket_class, RealtimeSocket):
        return False
    if (params.get("EIO") != "4" or params.get("transport") != "websocket" or "sid" in params
            or "j" in params):
        return False
    if (headers.get("upgrade", "").lower() != "websocket" or headers.get("sec-websocket-version") != "13"
            or "upgrade" not in [part.strip() for part in headers.get("connection", "").lower().split(",")]
            or not _valid_key(headers.get("sec-websocket-key"))):
        return False
    # Else the application answers 429 / the namespace refuses.
    return engine._per_ip.get(remote, 0) < engine.max_connections_per_ip and not _shutting_down(engine)


def cors_of(engine: Any, environ: dict) -> tuple[bool, dict | None]:
    """Whether the request's origin is allowed (else the application answers 400, naming it),
    and the environ its CORS headers are made from (None: the plain ones)."""
    if engine.cors_allowed_origins == []:
        return True, None
    origin = environ.get("HTTP_ORIGIN")
    if origin:
        allowed = engine._cors_allowed_origins(environ)
        if allowed is not None and origin not in allowed:
            return False, None
    return True, environ if origin or "HTTP_ACCESS_CONTROL_REQUEST_HEADERS" in environ else None


def take_websocket(front: Any, request: web.BaseRequest) -> Awaitable[web.StreamResponse] | None:
    """The answer to ``request``, through aiohttp's request handler, when it opens a new
    session's WebSocket that this module can serve (see the module docstring), else None (the
    application answers it). (server/http_front.py's HttpFront takes such requests before aiohttp
    parses them; this serves those it handed to aiohttp, and a node without the lean front.)

    :param front: server/polling.py's ``PollingFront`` (its engine; its CORS answer on refusal).
    :param request: a GET to the Engine.IO path, before the application has seen it.
    """
    engine = front.engine
    if not acceptable(engine, request.query, request.headers, request.remote or "") or request.can_read_body:
        return None
    if request.transport is None or getattr(request.protocol, "_message_tail", None) is None:
        return None
    environ = engine._async["translate_request"](request)
    allowed, cors = cors_of(engine, environ)
    if not allowed:
        return None
    return _open(front, request, environ, cors)


async def create_session(engine: Any, environ: dict) -> tuple[Any, dict | None]:
    """A new Engine.IO session for a WebSocket, as python-engineio 4.15.1's
    ``AsyncServer._handle_connect(environ, "websocket")`` creates it (server/library_pins.py
    pins it): ``(socket, None)``, or ``(None, answer)`` when the connect handler refused it
    (python-engineio's 401 answer). Its connect event goes straight to the handler
    (``RealtimeEngine.connect_event``), not through ``_trigger_event``'s five coroutines."""
    if engine.start_service_task:
        engine.start_service_task = False
        engine.service_task_handle = engine.start_background_task(engine._service_task)
    sid = engine.generate_id()
    # A RealtimeSocket from the start (python-engineio makes an AsyncSocket, which
    # EngineAdapter._trigger_event turns into one): its OPEN queued without a send, with the
    # times RealtimeEngine._fix_open_packet would correct python-engineio's to.
    socket = engine.socket_class(engine, sid)
    engine.sockets[sid] = socket
    socket.queue.put_nowait(eio_packet.Packet(eio_packet.OPEN, {
        "sid": sid,
        "upgrades": engine._upgrades(sid, "websocket"),
        "pingTimeout": round(engine.ping_timeout * 1000),
        "pingInterval": round((engine.ping_interval + engine.ping_interval_grace_period) * 1000),
        "maxPayload": engine.max_http_buffer_size,
    }))
    ret = await engine.connect_event(sid, environ)
    if ret is not None and ret is not True:
        del engine.sockets[sid]
        engine.logger.warning("Application rejected connection")
        return None, engine._unauthorized(ret or None)
    socket.schedule_ping()
    return socket, None


class _Detached(web.StreamResponse):
    """What the request handler returns once the connection is ours: aiohttp's RequestHandler,
    detached already, must write nothing, and ends its start() Task on this reset."""

    async def prepare(self, request: web.BaseRequest) -> Any:
        raise ConnectionResetError("the connection was handed to server.websocket")


async def open_session(engine: Any, environ: dict, key: str,
                       take_transport: Callable[[], tuple[asyncio.Transport, bytes] | None]) -> Any:
    """Create a new session for the WebSocket request of ``environ`` and make a
    :class:`WebSocketConnection` its connection's protocol: None once done, else the answer
    to write (the connect handler's refusal, or a 400 when the client left meanwhile).

    :param engine: the Engine.IO server.
    :param environ: the request's environ (the connect handlers read it).
    :param key: the client's ``Sec-WebSocket-Key``.
    :param take_transport: detaches the connection from the protocol that read the request
        and returns its transport and the bytes received behind the request, or None when the
        connection is gone; called once the session is accepted.
    """
    engine.requests_in_flight += 1  # while the WebSocket is open, as RealtimeEngine.serve counted it
    handed = False
    try:
        socket, refusal = await create_session(engine, environ)
        if refusal is not None:
            return refusal
        taken = take_transport() if not socket.closed else None
        if taken is None:  # the client left meanwhile
            await engine._end(socket)
            return web.Response(status=400, text='"Invalid WebSocket handshake"')
        transport, tail = taken
        connection = WebSocketConnection(socket, transport, engine)
        switching = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept_key(key).encode() + b"\r\n\r\n")
        transport.set_protocol(connection)
        handed = True
        connection.start(switching, tail)
        return None
    finally:
        if not handed:
            engine.requests_in_flight -= 1


def _detach(request: web.BaseRequest) -> tuple[asyncio.Transport, bytes] | None:
    """Take the connection of ``request`` from aiohttp's RequestHandler without closing it:
    with no transport its connection_lost closes nothing, its server manager forgets it, its
    keep-alive timer is cancelled, and its start() Task ends on _Detached's reset
    (server/library_pins.py)."""
    transport = request.transport
    if transport is None or transport.is_closing():
        return None
    handler = request.protocol
    tail = handler._message_tail  # frames the client sent behind its request already
    handler._message_tail = b""
    handler.transport = None
    handler.connection_lost(None)
    # The request stays in the session's environ (the connect handlers read it): it must not
    # keep the detached handler alive through itself or its writer (request.transport is
    # None from now on, as for any request whose connection is gone).
    request._protocol = None
    request._payload_writer = None
    return transport, tail


async def _open(front: Any, request: web.BaseRequest, environ: dict, cors: dict | None) -> web.StreamResponse:
    answer = await open_session(front.engine, environ, request.headers["Sec-WebSocket-Key"],
                                lambda: _detach(request))
    if answer is None:
        return _Detached(status=101)
    return front._response(answer, request, cors, "GET")


class WebSocketConnection(asyncio.Protocol):
    """One session's WebSocket after the handshake: parses the client's frames, hands each
    message to the session, answers pings and the close handshake, pauses reading while the
    session's handlers are backlogged, and is the queued writer's WebSocket (``send``,
    ``close``) with flow control. When the connection ends, for any reason, the session ends
    through ``RealtimeSocket.websocket_ended``, as on the aiohttp path.

    :param socket: the session (a RealtimeSocket).
    :param transport: the TCP transport, handed over by aiohttp.
    :param engine: the Engine.IO server (a RealtimeEngine).
    """

    __slots__ = ("socket", "transport", "engine", "parser", "loop", "_write_paused", "_drain", "_closing",
                 "_close_timer", "_ended", "_read_paused", "_stopped")

    def __init__(self, socket: Any, transport: asyncio.Transport, engine: Any) -> None:
        self.socket = socket
        self.transport = transport
        self.engine = engine
        self.parser = FrameParser(engine.max_http_buffer_size)
        self.loop = asyncio.get_running_loop()
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None  # the writer waits on it while paused
        self._closing = False  # our close frame is sent: nothing more is read or written
        self._close_timer: asyncio.TimerHandle | None = None
        self._ended = False
        self._read_paused = False
        self._stopped = False  # the session could not go on: only a close frame is still read

    def start(self, switching: bytes, tail: bytes) -> None:
        """Write the ``101`` answer ``switching`` and what the session queued (its OPEN) in
        one write, then read, starting with ``tail`` (what the client sent behind its request)."""
        socket = self.socket
        socket.connected = True  # as RealtimeSocket.websocket_opened marks it
        socket.upgraded = True
        queue = socket.queue
        items = queue.items()
        frames = [switching]
        if items and all(pkt is not None and isinstance(pkt.data, (str, dict, type(None)))
                         and pkt.packet_type != eio_packet.NOOP for pkt in items):
            # Written here, in order, before anything else can be: no writer Task for them.
            while not queue.empty():
                frames.append(text_frame(queue.get_nowait().encode()))
                queue.task_done()
        self.transport.write(b"".join(frames))
        socket.open_websocket(self, self.transport, direct=True)
        if tail:
            self.data_received(tail)

    # ------------------------------------------------------------------ reading

    def data_received(self, data: bytes) -> None:
        if self._closing or self._stopped:
            for opcode, payload in self.parser.feed(data):
                if opcode == CLOSE:
                    if self._closing:
                        self.transport.close()  # the client answered our close: done
                    else:
                        self._close_received(payload)
                    break
            return
        socket = self.socket
        loop = self.loop
        socket.server.read_deadlines.arm(socket)  # the read watchdog: a heartbeat cycle from now
        for opcode, payload in self.parser.feed(data):
            if self._closing or self._stopped:
                break
            if opcode == TEXT or opcode == BINARY:
                if not socket.read_message(payload, loop):
                    self._end_reading()
                    return
                if not self._read_paused and socket.backlogged():
                    self._read_paused = True
                    self.transport.pause_reading()  # until the session's handlers catch up
                    socket.drained().add_done_callback(self._resume_reading)
            elif opcode == PING:
                self.transport.write(control_frame(PONG, payload))
            elif opcode == CLOSE:
                self._close_received(payload)
            elif opcode < 0:  # the stream broke the protocol: payload is the close code
                log.info("%s: WebSocket protocol error, closing with %s", socket.sid, payload)
                self.fail(payload)
            # a PONG needs nothing

    def _resume_reading(self, _future: Any = None) -> None:
        self._read_paused = False
        socket = self.socket
        if not self._closing and not self._stopped:
            socket.server.read_deadlines.arm(socket)  # not silent: we stopped reading it
        if not self._closing and not self.transport.is_closing():
            self.transport.resume_reading()

    def _close_received(self, payload: bytes) -> None:
        """The client's close frame: answered with its code (or 1002/1007 for a bad one), and
        the connection closed, which ends the session."""
        code = NORMAL
        if len(payload) == 1:
            code = PROTOCOL_ERROR
        elif len(payload) >= 2:
            code = int.from_bytes(payload[:2], "big")
            if code not in _CLIENT_CODES and not 3000 <= code <= 4999:
                code = PROTOCOL_ERROR
            else:
                try:
                    payload[2:].decode("utf-8")
                except UnicodeDecodeError:
                    code = INVALID_DATA
        self._closing = True
        self.socket.stop_reading()
        transport = self.transport
        if not transport.is_closing():
            transport.write(control_frame(CLOSE, code.to_bytes(2, "big") if payload else b""))
            transport.close()

    def _end_reading(self) -> None:
        """The session cannot go on (an undecodable packet, a type a client may not send): stop
        reading; the session ends, and its writer closes the WebSocket after what is queued,
        as the aiohttp path's read loop does when it breaks."""
        self._stopped = True
        self.socket.stop_reading()
        self._session_ends()

    def fail(self, code: int) -> None:
        """Fail the WebSocket connection (RFC 6455 7.1.7): a close frame with ``code``, then hang up."""
        self._closing = True
        self.socket.stop_reading()
        transport = self.transport
        if not transport.is_closing():
            transport.write(control_frame(CLOSE, code.to_bytes(2, "big")))
            transport.close()

    # ------------------------------------------------------------------ the end

    def connection_lost(self, exc: BaseException | None) -> None:
        self._closing = True
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_exception(ConnectionResetError("connection lost"))
        self._drain = None
        self.socket.stop_reading()
        self._session_ends()

    def _session_ends(self) -> None:
        if not self._ended:
            self._ended = True
            start_eagerly(self._end_session())

    async def _end_session(self) -> None:
        """The session's end, as RealtimeEngine.serve ends one after its aiohttp read loop."""
        socket, engine = self.socket, self.engine
        try:
            await socket.websocket_ended()
        finally:
            engine.requests_in_flight -= 1
            drop = getattr(engine, "_drop_transport", None)
            if drop is not None:
                drop(socket.sid, self.transport)
            if socket.closed and engine.sockets.get(socket.sid) is socket:
                del engine.sockets[socket.sid]  # as python-engineio's _handle_connect does

    # ------------------------------------------------------------------ writing (the queued writer's WebSocket)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain = self._drain
        self._drain = None
        if drain is not None and not drain.done():
            drain.set_result(None)

    async def send(self, message: Any) -> None:
        """Send one message: a text frame for a str, a binary frame for bytes; waits while the
        transport's buffer is over its high-water mark."""
        while self._write_paused and not self._closing:
            if self._drain is None:
                self._drain = self.loop.create_future()
            await self._drain
        if self._closing or self.transport.is_closing():
            raise ConnectionResetError("WebSocket closed")
        self.transport.write(text_frame(message) if message.__class__ is str else binary_frame(bytes(message)))

    async def close(self) -> None:
        """Start the closing handshake: our close frame (1000); the connection is closed when
        the client answers, or after ``CLOSE_WAIT`` seconds."""
        transport = self.transport
        if self._closing or transport.is_closing():
            if not transport.is_closing() and self._close_timer is None:
                transport.close()
            return
        self._closing = True
        self.socket.stop_reading()
        transport.write(control_frame(CLOSE, NORMAL.to_bytes(2, "big")))
        self._close_timer = self.loop.call_later(CLOSE_WAIT, transport.close)
