"""HttpFront: the long-polling requests of live local sessions served by our own asyncio Protocol.

Even before the application (server/polling.py), a polling request through aiohttp paid for a
Task per request (``RequestHandler.start`` on Python 3.11), a ``BaseRequest``, a ``StreamWriter``,
a ``web.Response`` and its header serialisation. :class:`LeanServer` is aiohttp's low-level
``Server`` whose protocol factory gives every accepted connection an :class:`HttpFront` instead
of aiohttp's ``RequestHandler``. The front parses each request's head with httptools (llhttp)
and serves exactly what ``PollingFront.route`` accepts — the polling handshake GET, and the
long-poll GET and the POST of a live local session — with the same checks
(``RealtimeEngine.check_polling``, through ``PollingFront.post`` for a POST) and the same
answers (``PollingFront.answer_parts``), written to the transport as bytes. A long-poll GET
waits for its packets through the session queue's ``on_put`` callback and one timer, without a
Task; a POST or a GET runs as a coroutine started eagerly (a Task only if it has to wait, as
the handshake does).

Anything else — another path or method, a WebSocket upgrade, OPTIONS, JSONP, an unknown or
foreign session, HTTP/1.0, ``Transfer-Encoding``, ``Expect``, a GET with a body, a head longer
than aiohttp's 8190-byte line limit or with more headers than its 128, anything httptools
refuses — hands the connection to aiohttp for good: its ``RequestHandler`` from the original
factory takes the transport and every byte received since the start of the current request
(so ``PollingFront.handle`` sees it as before).

Requests on one connection are served one at a time, in order: bytes of pipelined requests
wait, and reading pauses while more than a request's worth waits. Limits: the head must come
within ``HEAD_TIMEOUT`` (else 408 and close), a POST's body within the engine's
``body_timeout`` (408, through ``check_polling``), a declared body over the engine's
``max_http_buffer_size`` gets 413 at once; an idle connection closes after aiohttp's
keep-alive timeout. At shutdown idle connections close, a pending long-poll is answered (a
NOOP) with ``Connection: close``, and what is left after the shutdown timeout is aborted.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

import aiohttp
import httptools
from aiohttp import web, web_server
from engineio import packet as eio_packet

from . import websocket
from .eager import start_eagerly
from .lean_request import Headers, LeanRequest, lean_environ
from .polling import TEXT_PACKETS, PollingFront, parse_query

log = logging.getLogger("server.http_front")

MAX_HEAD = 8190  # aiohttp's max_line_size and max_field_size: a longer head goes to aiohttp
MAX_HEADERS = 128  # aiohttp's max_headers
HEAD_TIMEOUT = 10.0  # seconds for a request's head, from its first byte
LINGER_TIMEOUT = 10.0  # aiohttp's lingering_time: how long the rest of a refused body is read
_SERVER = "Python/{0[0]}.{0[1]} aiohttp/{1}".format(sys.version_info, aiohttp.__version__)  # as aiohttp's
_REASONS = {status.value: status.phrase for status in HTTPStatus}
_NOOP = eio_packet.NOOP
# Header names as sent -> lower-case str, for the first 256 spellings seen (decoded once each).
_NAMES: dict[bytes, str] = {}
_TYPES = tuple(str(n) for n in range(len(eio_packet.packet_names)))  # a packet type's digit
class _StalledBody:
    """The body stream of a POST whose body did not come within ``body_timeout``: reading it
    times out, so ``check_polling`` answers 408 as it does on aiohttp's path."""

    async def read(self, n: int = -1) -> bytes:
        raise asyncio.TimeoutError

    def at_eof(self) -> bool:
        return False


_date_second = -1
_date_value = ""
_date_bytes = b""
_time = time.time
# The rest of a 200 answer's head after its constant headers (PollingFront.ok_head), and its body.
_OK_TAIL = b"Content-Length: %d\r\nDate: %s\r\nServer: " + _SERVER.encode() + b"\r\n\r\n%s"
_OK = b"ok"
_PLAIN = "text/plain"  # python-engineio's Content-Type of a POST's ok


def http_date() -> str:
    """The Date header's value, formatted once a second."""
    global _date_second, _date_value, _date_bytes
    now = int(_time())
    if now != _date_second:
        _date_second, _date_value = now, formatdate(now, usegmt=True)
        _date_bytes = _date_value.encode("latin-1")
    return _date_value


def _closes(connection: str) -> bool:
    """Whether a Connection header's value has the ``close`` token (what makes llhttp's
    ``should_keep_alive`` false for an HTTP/1.1 request)."""
    return "close" in connection.lower() and any(t.strip() == "close" for t in connection.lower().split(","))


def payload_bytes(packets: list) -> bytes:
    """python-engineio's ``Payload(packets=packets).encode()`` as UTF-8 bytes (what its ``_ok``
    answers a long-poll with): the packets joined by \\x1e, a binary one in base64 after a
    ``b``. One text packet, the common answer, is encoded here without the library's steps."""
    if len(packets) == 1:
        pkt = packets[0]
        data = pkt.data
        if data.__class__ is str and not pkt.binary and not pkt.encode_cache:
            return (_TYPES[pkt.packet_type] + data).encode()
        return pkt.encode(b64=True).encode()
    return "\x1e".join([pkt.encode(b64=True) for pkt in packets]).encode()


class HttpFront(asyncio.Protocol):
    """One client connection until it is handed to aiohttp (see the module docstring).

    :param server: the LeanServer that accepted it (its front, engine and keep-alive timeout).
    """

    __slots__ = ("server", "front", "engine", "transport", "loop", "remote", "buf", "parser", "url", "headers",
                 "_name", "_count", "held", "body_at", "busy", "keep_alive", "closing", "paused", "processing",
                 "timer", "timer_at", "deadline", "kind", "poll_socket", "pending", "linger")

    def __init__(self, server: "LeanServer") -> None:
        self.server = server
        self.front: PollingFront = server.lean_front
        self.engine = self.front.engine
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.remote = ""
        self.buf = b""  # every byte received since the start of the current request
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers = Headers()
        self._name = ""
        self._count = 0
        # The most bytes held before reading pauses: one whole request (a head and the largest
        # body) always fits, so a request that can be served is never held back.
        self.held = MAX_HEAD + self.engine.max_http_buffer_size
        # A POST waiting for its body: (head length, body length, session, cors, request).
        self.body_at: tuple[int, int, Any, Any, LeanRequest] | None = None
        self.busy = False  # a request is being served; later bytes wait
        self.keep_alive = True
        self.closing = False  # shutting down: answer what is in progress with Connection: close
        self.paused = False
        self.processing = False
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0  # when the timer fires
        self.deadline = 0.0
        self.kind = ""  # what the deadline is for: idle, head, body, poll
        self.poll_socket: Any = None  # the session whose packets a pending long-poll waits for
        self.pending: Any = None  # (cors, accept-encoding, method) of the request being served
        # Bytes of a refused body still to come: read and dropped before closing (as aiohttp's
        # lingering close), so the client finishes sending and reads the answer.
        self.linger = 0

    # ------------------------------------------------------------------ httptools callbacks

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = _NAMES.get(name)
        if key is None:
            key = name.decode("latin-1").lower()
            if len(_NAMES) < 256:
                _NAMES[name] = key
        text = value.decode("latin-1")
        headers = self.headers
        self._count += 1
        headers[key] = headers[key] + "," + text if key in headers else text

    # (No on_headers_complete, no on_message_complete: a callback less per request each. A GET
    # served here has neither Content-Length nor Transfer-Encoding, so its message ends with its
    # head; keep-alive is read from the Connection header, see _closes.)

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, (list, tuple)) and peer else ""
        # No tcp_keepalive(transport) as aiohttp's RequestHandler does: the listening socket
        # carries SO_KEEPALIVE to every accepted one (server/__main__.py, listen_sockets).
        self.server.lean_fronts.add(self)
        self._expire(self.server.keepalive_timeout, "idle")

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        self.server.lean_fronts.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        socket = self.poll_socket
        if socket is not None:
            # The client gave up its long-poll: what is queued waits for its next one.
            self.poll_socket = None
            if socket.queue.on_put == self._on_put:
                socket.queue.on_put = None
            self.engine._polling.discard(socket.sid)
            self._done()

    def data_received(self, data: bytes) -> None:
        if self.linger:
            self.linger -= len(data)
            if self.linger <= 0 and not self.busy and self.transport is not None:
                self.transport.close()
            return
        self.buf = self.buf + data if self.buf else data
        if not self.busy and not self.processing:
            self._process()
        if len(self.buf) > self.held and not self.paused and self.transport:
            self.paused = True  # bounded: pipelined requests wait in the kernel's buffers
            self.transport.pause_reading()

    # ------------------------------------------------------------------ requests

    def _process(self) -> None:
        """Serve the requests waiting in ``buf``, one at a time, until one has to wait."""
        self.processing = True
        try:
            while self.buf and not self.busy and self.transport is not None:
                if not self._next_request():
                    break
        finally:
            self.processing = False
        if self.paused and self.transport is not None and len(self.buf) <= self.held:
            self.paused = False
            self.transport.resume_reading()

    def _next_request(self) -> bool:
        """Start the request at the head of ``buf``; False when it needs more bytes (or the
        connection was handed over or is closing)."""
        buf = self.buf
        if self.body_at is not None:
            return self._take_body()
        end = buf.find(b"\r\n\r\n")
        if end < 0 or end + 4 > MAX_HEAD:
            if len(buf) > MAX_HEAD or buf.count(b"\n") != buf.count(b"\r\n"):
                self._hand_off()  # too long for us, or bare LFs (which llhttp may accept)
            elif self.kind != "head":
                self._expire(HEAD_TIMEOUT, "head")
            return False
        size = end + 4
        head = buf[:size]
        if head.count(b"\n") != head.count(b"\r\n"):
            return self._hand_off()  # a bare LF: llhttp might end the head elsewhere than we do
        self.url = b""
        self.headers = Headers()
        self._count = 0
        parser = self.parser
        try:
            parser.feed_data(head)
        except httptools.HttpParserUpgrade:
            return self._websocket(size)
        except Exception:  # malformed, ...: aiohttp answers it
            return self._hand_off()
        headers = self.headers
        prefix = self.front.prefix_bytes
        url = self.url
        if (self._count > MAX_HEADERS or not url.startswith(prefix) or parser.get_http_version() != "1.1"
                or "transfer-encoding" in headers or "expect" in headers):
            return self._hand_off()
        if "connection" in headers and _closes(headers["connection"]):
            self.keep_alive = False
        method = parser.get_method()
        try:
            query = url[len(prefix):].decode("ascii")
        except UnicodeDecodeError:
            return self._hand_off()
        if method == b"GET":
            if "content-length" in headers:
                return self._hand_off()
            target = self.front.route("GET", query, headers, self.remote)
            if target is None:
                return self._hand_off()
            self.buf = buf[size:]
            self._start(target[0], target[1], "GET", query, None)
            return True
        if method != b"POST":
            return self._hand_off()
        length = headers.get("content-length")
        if length is None or not length.isdigit():
            return self._hand_off()
        target = self.front.route("POST", query, headers, self.remote)
        if target is None or target[0] is None:
            return self._hand_off()
        request = LeanRequest(self.remote, int(length))
        if request.content_length > self.engine.max_http_buffer_size:
            self.linger = max(request.content_length - (len(buf) - size), 0)
            self.buf = b""  # no more requests: the answer closes the connection
            self.keep_alive = False
            self._start(target[0], target[1], "POST", query, request)  # 413 from check_polling
            return False
        self.body_at = (size, request.content_length, target[0], target[1], request)
        if len(buf) < size + request.content_length:
            self._expire(self.engine.body_timeout, "body")
        return self._take_body()

    def _websocket(self, size: int) -> bool:
        """An upgrade request (its head ``size`` bytes): a new session's WebSocket is opened from
        here by server/websocket.py, with no aiohttp on the way; any other goes to aiohttp."""
        headers = self.headers
        parser = self.parser
        prefix = self.front.prefix_bytes
        url = self.url
        if (self._count > MAX_HEADERS or not url.startswith(prefix) or parser.get_method() != b"GET"
                or parser.get_http_version() != "1.1" or "content-length" in headers
                or "transfer-encoding" in headers):
            return self._hand_off()
        try:
            query = url[len(prefix):].decode("ascii")
        except UnicodeDecodeError:
            return self._hand_off()
        params = parse_query(query)
        if params is None or not websocket.acceptable(self.engine, params, headers, self.remote):
            return self._hand_off()
        request = LeanRequest(self.remote, path=self.front.prefix[:-1], query_string=query, headers=headers,
                              query=params)
        request.transport = self.transport
        environ = lean_environ(request)
        allowed, cors = websocket.cors_of(self.engine, environ)
        if not allowed:
            return self._hand_off()
        tail, self.buf = self.buf[size:], b""
        self.busy = True  # (counted in flight until the connection is the WebSocket's)
        self.deadline = 0.0
        self.kind = ""
        self.keep_alive = False  # a refused WebSocket request is answered, then the connection closed
        self.pending = (cors, "", "GET")
        self.front.lean_requests += 1
        self.engine.requests_in_flight += 1
        start_eagerly(self._open_websocket(environ, headers["sec-websocket-key"], tail))
        return False

    async def _open_websocket(self, environ: dict[str, Any], key: str, tail: bytes) -> None:
        try:
            refusal = await websocket.open_session(self.engine, environ, key, lambda: self._give_transport(tail))
        except Exception:
            log.exception("WebSocket handshake failed")
            refusal = web.Response(status=500, text="500 Internal Server Error")
        if refusal is not None:
            self._answer(refusal)

    def _give_transport(self, tail: bytes) -> tuple[asyncio.Transport, bytes] | None:
        """This connection for the WebSocket, with ``tail`` (what came behind its request): this
        front lets it go; None when the client left meanwhile."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return None
        self.transport = None
        self.server.lean_fronts.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._done()
        self.pending = None
        # The parser calls back into this front, and so holds it: a reference cycle the
        # collector would have to find and free, once per connect (bench/connect_cost.py
        # --stages 5000,10000 --garbage). Nothing is parsed here any more; let it go now.
        self.parser = None  # type: ignore[assignment]
        if self.paused:
            self.paused = False
            transport.resume_reading()
        return transport, tail

    def _take_body(self) -> bool:
        """Serve the POST whose head was read once its whole body is in ``buf``."""
        assert self.body_at is not None
        size, length, socket, cors, request = self.body_at
        total = size + length
        buf = self.buf
        if len(buf) < total:
            return False
        self.body_at = None
        body = buf[size:total]
        self.buf = buf[total:]
        try:
            self.parser.feed_data(body)
        except Exception:  # cannot happen for a body of the declared length; start afresh
            self.parser = httptools.HttpRequestParser(self)
        self._start(socket, cors, "POST", "", request, body)
        return True

    def _start(self, socket: Any, cors: Any, method: str, query: str, request: LeanRequest | None,
               body: bytes | None = None) -> None:
        """Serve one lean request (counted as in flight until it is answered)."""
        self.busy = True
        self.deadline = 0.0  # no timer while served: a long-poll arms its own
        self.kind = ""
        self.pending = (cors, self.headers.get("accept-encoding", ""), method)
        front = self.front
        front.lean_requests += 1
        self.engine.requests_in_flight += 1
        if socket is None:
            start_eagerly(self._handshake(query))
        elif method == "POST":
            assert request is not None
            start_eagerly(self._post(socket, request, body))
        elif self.engine.poll_unrefused(socket):
            self._poll(socket)  # check_polling would let it through without awaiting anything
        else:
            start_eagerly(self._get(socket))

    async def _handshake(self, query: str) -> None:
        try:
            request = LeanRequest(self.remote, path=self.front.prefix[:-1], query_string=query, headers=self.headers)
            answer = await self.engine._handle_connect(lean_environ(request), "polling")
        except Exception:
            log.exception("polling handshake failed")
            answer = web.Response(status=500, text="500 Internal Server Error")
        self._answer(answer)

    async def _post(self, socket: Any, request: LeanRequest, body: bytes | None) -> None:
        try:
            answer = await self.front.post(request, socket, body)
        except Exception:
            log.exception("polling POST failed")
            answer = web.Response(status=500, text="500 Internal Server Error")
        if answer is None:
            self._answer_ok(_PLAIN, _OK)  # python-engineio's _ok() (server/adapter.py's body)
        else:
            self._answer(answer)

    async def _get(self, socket: Any) -> None:
        """A long-poll: answered at once when packets wait, else when the first one is queued
        (``_on_put``) or after a heartbeat cycle (``_poll_expired``), without a Task."""
        engine = self.engine
        try:
            refusal = await engine.check_polling(None, socket, "GET", True)
        except Exception:
            log.exception("polling GET failed")
            refusal = web.Response(status=500, text="500 Internal Server Error")
        if refusal is not None:
            return self._answer(refusal)
        self._poll(socket)

    def _poll(self, socket: Any) -> None:
        """A long-poll that ``check_polling`` let through."""
        engine = self.engine
        if socket.upgrading or socket.upgraded:
            # python-engineio: no more packets through polling once an upgrade began
            return self._answer(engine._ok([eio_packet.Packet(_NOOP)]))
        engine._polling.add(socket.sid)
        self.poll_socket = socket
        if socket.queue._queue:  # (not SendQueue.empty(), without the call)
            return self._deliver()
        socket.queue.on_put = self._on_put
        self._expire(engine.ping_interval + engine.ping_timeout, "poll")

    def _on_put(self) -> None:
        """The first packet for a pending long-poll: deliver on the next loop turn, so the
        packets queued together go in one answer (as python-engineio's wake-up does); the polls
        woken in one turn share that loop callback (``LeanServer.deliver_woken``)."""
        socket = self.poll_socket
        if socket is not None and socket.queue.on_put == self._on_put:
            socket.queue.on_put = None
            server = self.server
            if not server.woken:  # one loop callback for all the polls woken in this turn
                self.loop.call_soon(server.deliver_woken)
            server.woken.append(self)

    def _deliver(self) -> None:
        """Answer the pending long-poll with what is queued (python-engineio's ``poll``)."""
        socket = self.poll_socket
        if socket is None:
            return  # the connection was lost meanwhile
        self.poll_socket = None
        self.deadline = 0.0
        self.kind = ""
        queue = socket.queue
        packets: list[Any] = []
        while queue._queue:  # (SendQueue.empty(), without the call)
            pkt = queue.get_nowait()
            queue.task_done()
            if pkt is None:
                if packets:
                    queue.put_nowait(None)  # the session's end, for its next poll
                break
            packets.append(pkt)
        engine = self.engine
        sid = socket.sid
        engine._polling.discard(sid)
        if sid in engine.sockets and engine.sockets[sid].closed:
            del engine.sockets[sid]
        self._answer_ok(TEXT_PACKETS, payload_bytes(packets))

    def _poll_expired(self) -> None:
        socket = self.poll_socket
        if socket is None:
            return
        self.poll_socket = None
        if socket.queue.on_put == self._on_put:
            socket.queue.on_put = None
        start_eagerly(self._expired(socket))

    async def _expired(self, socket: Any) -> None:
        """No packet for a whole heartbeat cycle: the session ends (python-engineio's
        QueueEmpty), the poll gets 400."""
        engine = self.engine
        sid = socket.sid
        try:
            await socket.close(wait=False, reason=engine.reason.TRANSPORT_ERROR)
            if sid in engine.sockets:
                await engine.disconnect(sid)
        except Exception:
            log.exception("ending an expired poll's session failed")
        finally:
            engine._polling.discard(sid)
        self._answer(engine._bad_request())

    # ------------------------------------------------------------------ answers

    def _answer(self, answer: Any) -> None:
        """Write python-engineio's answer (a dict) or a refusal (a ``web.Response``), then go on
        with the next request (or close)."""
        self._done()
        transport = self.transport
        if transport is None:
            return
        cors, accept_encoding, method = self.pending
        self.pending = None
        if isinstance(answer, dict):
            status, headers, body = self.front.answer_parts(answer, accept_encoding, cors, method)
            close = False
        else:
            status, body = answer.status, answer.body or b""
            headers = [(k, v) for k, v in answer.headers.items() if k.lower() != "content-length"]
            close = answer.headers.get("Connection", "").lower() == "close"
        close = close or not self.keep_alive or self.closing
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"]
        for name, value in headers:
            lines.append(f"{name}: {value}\r\n")
        lines.append(f"Content-Length: {len(body)}\r\nDate: {http_date()}\r\nServer: {_SERVER}\r\n")
        if close:
            lines.append("Connection: close\r\n")
        lines.append("\r\n")
        transport.write("".join(lines).encode("latin-1") + body)
        if close:
            self.buf = b""
            if self.linger > 0:
                self._expire(LINGER_TIMEOUT, "linger")
            else:
                transport.close()
            return
        self._go_on(transport)

    def _answer_ok(self, content_type: str, body: bytes) -> None:
        """python-engineio's 200 answer (``_ok``) with this Content-Type and ``body``: written
        from the front's precomputed head (``PollingFront.ok_head``) when nothing in it depends
        on the request — no Origin, no compression, not the connection's last answer — else
        through :meth:`_answer`, as the answer's dict."""
        cors, accept_encoding, _method = self.pending
        engine = self.engine
        transport = self.transport
        if (cors is not None or self.closing or not self.keep_alive or transport is None
                or (accept_encoding and engine.http_compression and len(body) >= engine.compression_threshold)):
            return self._answer({"status": "200 OK", "headers": [("Content-Type", content_type)], "response": body})
        self.pending = None
        self._done()
        if int(_time()) != _date_second:
            http_date()
        front = self.front
        head = front.payload_head if content_type is TEXT_PACKETS else front.post_head
        if not head:
            head = front.ok_head(content_type)
        transport.write(head + _OK_TAIL % (len(body), _date_bytes, body))
        self._go_on(transport)

    def _go_on(self, transport: Any) -> None:
        """An answer was written and the connection stays: wait idle, or serve the next request
        already received, or read again once what is held fits."""
        self._expire(self.server.keepalive_timeout, "idle")
        if not self.processing and self.buf:
            self._process()
        elif self.paused and len(self.buf) <= self.held:
            self.paused = False
            transport.resume_reading()

    def _done(self) -> None:
        if self.busy:
            self.busy = False
            self.engine.requests_in_flight -= 1

    # ------------------------------------------------------------------ timers, hand-off, shutdown

    def _expire(self, delay: float, kind: str) -> None:
        """Arm the connection's one deadline ``delay`` seconds from now, for ``kind``."""
        when = self.loop.time() + delay
        self.deadline = when
        self.kind = kind
        timer = self.timer
        if timer is None or self.timer_at > when:
            if timer is not None:
                timer.cancel()
            self.timer = self.loop.call_at(when, self._on_timer)
            self.timer_at = when

    def _on_timer(self) -> None:
        self.timer = None
        if not self.deadline or self.transport is None:
            return
        if self.loop.time() < self.deadline:
            self.timer = self.loop.call_at(self.deadline, self._on_timer)
            self.timer_at = self.deadline
            return
        kind = self.kind
        self.deadline = 0.0
        self.kind = ""
        if kind == "poll":
            self._poll_expired()
        elif kind == "body":
            assert self.body_at is not None
            _size, _length, socket, cors, request = self.body_at
            self.body_at = None
            self.buf = b""
            self.keep_alive = False
            request.content = _StalledBody()
            self._start(socket, cors, "POST", "", request)  # 408 from check_polling
        elif kind == "head":
            self.buf = b""
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\n"
                                 b"Content-Length: 21\r\nConnection: close\r\n\r\n408 Request Timeout\r\n")
            self.transport.close()
        elif not self.busy:  # idle past the keep-alive timeout
            self.transport.close()

    def _hand_off(self) -> bool:
        """Give the connection to aiohttp, with every byte since the current request began."""
        transport = self.transport
        assert transport is not None and not self.busy
        self.transport = None
        self.server.lean_fronts.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        data, self.buf = self.buf, b""
        handler = web_server.Server.__call__(self.server)
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self.paused:
            transport.resume_reading()
        if data:
            handler.data_received(data)
        return False

    def shut(self) -> None:
        """Shutdown begins: close now when idle, else after the current answer (a pending
        long-poll is answered at once)."""
        self.closing = True
        transport = self.transport
        if transport is None:
            return
        if not self.busy and self.body_at is None:
            transport.close()  # (a head not complete yet is dropped, as aiohttp does)
        elif self.poll_socket is not None and self.poll_socket.queue.on_put == self._on_put:
            self.poll_socket.queue.put_nowait(eio_packet.Packet(_NOOP))  # ends the poll now


class LeanServer(web_server.Server):
    """aiohttp's low-level server whose connections start with an :class:`HttpFront`
    (made one by :func:`serve_lean_http`; aiohttp's own handler takes over a connection the
    front hands to it)."""

    lean_front: PollingFront
    lean_fronts: set[HttpFront]
    keepalive_timeout: float
    woken: list[HttpFront]  # fronts whose long-poll got its first packet in this loop turn

    def deliver_woken(self) -> None:
        """Answer the long-polls woken since the last loop turn, in the order they were woken."""
        fronts, self.woken = self.woken, []
        for conn in fronts:
            try:
                conn._deliver()
            except Exception:  # one failed answer does not keep the others'
                log.exception("answering a long-poll failed")

    def __call__(self) -> Any:
        return HttpFront(self)

    def pre_shutdown(self) -> None:
        super().pre_shutdown()
        for conn in list(self.lean_fronts):
            conn.shut()

    async def shutdown(self, timeout: float | None = None) -> None:
        """aiohttp's connections and ours end together: ours once their answer is written,
        or aborted after ``timeout`` (aiohttp's graceful shutdown does not know them)."""
        await asyncio.gather(super().shutdown(timeout), self._drain(timeout if timeout is not None else 15.0))

    async def _drain(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while self.lean_fronts and loop.time() < end:
            for conn in list(self.lean_fronts):
                conn.shut()  # again: a session's end may have queued what a poll waited for
            await asyncio.sleep(0.05)
        for conn in list(self.lean_fronts):
            if conn.transport is not None:
                conn.transport.abort()


def serve_lean_http(app: web.Application, front: PollingFront) -> None:
    """Make the low-level server aiohttp builds for ``app`` (after :func:`serve_polling_first`
    made ``front`` its request handler) a :class:`LeanServer`: every connection starts with an
    HttpFront. aiohttp builds that server in ``Application._make_handler``; this wraps that
    method on this one instance (server/library_pins.py lists it and the internals used)."""
    make_handler = app._make_handler

    def _make_handler(**kwargs: Any) -> Any:
        server = make_handler(**kwargs)
        server.__class__ = LeanServer
        server.lean_front = front
        server.lean_fronts = set()
        server.woken = []
        server.keepalive_timeout = float(server._kwargs.get("keepalive_timeout", 75.0))
        return server

    app._make_handler = _make_handler  # type: ignore[method-assign]
