"""The lean long-polling path: ``/socket.io/`` polling requests served before the web application.

A long-polling request through the application paid for aiohttp's router and middleware chain,
then python-engineio's ``handle_request``: a WSGI-style environ built from every header, the query
parsed with ``urllib``, the answer as a status line string and header list turned into a
``web.Response``. :class:`PollingFront` sits in front of the application in aiohttp's low-level
server (its request handler, :func:`serve_polling_first`) and serves the three requests a polling
session is made of — the handshake GET, the long-poll GET and the POST — itself, with the same
engine state and the same guards:

- the request limits of ``RealtimeEngine``, through the one ``check_polling`` both paths call (a
  missed heartbeat; body size, read time and packet count; overlapping polls), and its
  connections per address;
- the CORS/origin rules, through python-engineio's own ``_cors_allowed_origins``/``_cors_headers``
  with an environ of the few headers they read, built only when the request names an origin;
- the engine's in-flight count; ``rt_http_requests_total{path="lean"}`` counts them (plain
  integers read when /metrics is scraped: a prometheus_client ``inc`` costs eight calls).

``HttpFront`` (server/http_front.py), our own Protocol in front of aiohttp's, serves the same
requests (``route`` decides for both; ``post`` and ``answer_parts`` are shared) without aiohttp's
per-request objects; what it hands to aiohttp comes here as before.

Anything else, or anything unusual about one of those (a WebSocket upgrade, OPTIONS, a JSONP
``j``, an unknown or foreign session, a session not connected or already upgraded, an origin
that is not allowed, another Engine.IO version, a malformed query), is handed to the application
unchanged (``path="app"``), which answers it as before: no new answers, only fewer steps for the
common ones.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable
from urllib.parse import unquote_plus

from aiohttp import web
from engineio import exceptions
from prometheus_client.core import CounterMetricFamily

from .websocket import take_websocket

log = logging.getLogger("server.polling")

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]

TEXT_PACKETS = "text/plain; charset=UTF-8"  # python-engineio's Content-Type of a payload
# The request headers python-engineio's CORS methods read (as environ keys, in translate_request's form).
_CORS_HEADERS = (("origin", "HTTP_ORIGIN"), ("host", "HTTP_HOST"), ("x-forwarded-proto", "HTTP_X_FORWARDED_PROTO"),
                 ("x-forwarded-host", "HTTP_X_FORWARDED_HOST"),
                 ("access-control-request-headers", "HTTP_ACCESS_CONTROL_REQUEST_HEADERS"))


def parse_query(query: str) -> dict[str, str] | None:
    """The query string's parameters, first value of each (as ``request.query.get`` gives);
    None when a part has no ``=`` or cannot be decoded (the application's path then answers).

    :param query: the raw query string, without the ``?``.
    """
    params: dict[str, str] = {}
    for part in query.split("&"):
        if not part:
            continue
        name, eq, value = part.partition("=")
        if not eq:
            return None
        if "%" in part or "+" in part:
            try:
                name, value = unquote_plus(name, errors="strict"), unquote_plus(value, errors="strict")
            except UnicodeDecodeError:
                return None
        if name not in params:
            params[name] = value
    return params


def cors_environ(method: str, headers: Any) -> dict[str, str]:
    """The part of python-engineio's environ its CORS methods read (``translate_request``'s
    keys and values: repeated headers joined with commas)."""
    environ = {"REQUEST_METHOD": method}
    for header, key in _CORS_HEADERS:
        values = headers.getall(header, None)
        if values:
            environ[key] = ",".join(values)
    environ["wsgi.url_scheme"] = environ.get("HTTP_X_FORWARDED_PROTO", "http")
    return environ


class PollingFront:
    """Serves ``/socket.io/`` long-polling requests itself; hands every other request on.

    Also a Prometheus collector (register it in the node's registry): ``rt_http_requests_total``
    by ``path``, ``lean`` (answered here) or ``app`` (handed to the application).

    :param engine: the Engine.IO server (a ``RealtimeEngine``) whose sessions and limits apply.
    :param path: the Engine.IO endpoint's path (``/socket.io/``).
    """

    def __init__(self, engine: Any, path: str = "/socket.io/") -> None:
        self.engine = engine
        self.lean_requests = 0
        self.app_requests = 0
        self.prefix = path + "?"
        self.prefix_bytes = self.prefix.encode()
        self.app_handler: Handler | None = None  # the application's request handler (set on install)
        self._plain_cors: list[tuple[str, str]] | None = None
        self._ok_heads: dict[str, bytes] = {}
        self.payload_head = b""  # ok_head(TEXT_PACKETS) once made
        self.post_head = b""  # ok_head("text/plain") once made
        # A query string -> (sid, EIO) of a polling request, or False: not one for this path
        # (parse_query's and route's reading of it, made once per distinct query; bounded).
        self._shapes: dict[str, Any] = {}

    def handle(self, request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
        """The low-level server's request handler: a polling request is answered here, any
        other goes to the application. A plain function returning what aiohttp awaits, so a
        request passed on (a WebSocket's, for its whole life) keeps no frame of this one."""
        raw = request.raw_path
        if raw.startswith(self.prefix):
            method = request.method
            if method == "GET" and "Upgrade" in request.headers:  # a new session's WebSocket (server/websocket.py)
                opening = take_websocket(self, request)
                if opening is not None:
                    self.lean_requests += 1
                    return opening
            if method == "GET" or method == "POST":
                target = self.route(method, raw[len(self.prefix):], request.headers, request.remote or "")
                if target is not None:
                    self.lean_requests += 1
                    return self._answer(request, method, *target)
        self.app_requests += 1
        assert self.app_handler is not None
        return self.app_handler(request)

    async def _answer(self, request: web.BaseRequest, method: str, socket: Any,
                      cors: dict[str, str] | None) -> web.StreamResponse:
        engine = self.engine
        engine.requests_in_flight += 1  # as RealtimeEngine.serve counts them
        try:
            if socket is None:
                return await self._handshake(request, cors)
            return await self._session(request, method, socket, cors)
        finally:
            engine.requests_in_flight -= 1

    def collect(self) -> Any:
        """The request counts, for prometheus_client's registry."""
        family = CounterMetricFamily("rt_http_requests", "HTTP requests by what served them (lean: a /socket.io/ "
                                     "long-polling request answered before the web application, by "
                                     "server/http_front.py or server/polling.py; app: the web application)",
                                     labels=["path"])
        family.add_metric(["lean"], self.lean_requests)
        family.add_metric(["app"], self.app_requests)
        yield family

    def route(self, method: str, query: str, headers: Any, remote: str) -> tuple[Any, dict[str, str] | None] | None:
        """Whether a polling request is one for the lean path: ``(session, cors)`` — the live
        local session (None for a handshake) and the CORS environ (None without an Origin
        header) — or None to leave it to the application. The one decision both fronts take:
        this one in aiohttp's low-level server and ``HttpFront`` (server/http_front.py).

        :param method: ``GET`` or ``POST``.
        :param query: the raw query string, without the ``?``.
        :param headers: the request's headers, looked up by lower-case name with ``in`` and
                        ``getall(name, default)`` (aiohttp's CIMultiDictProxy, or HttpFront's).
        :param remote: the client's address (what ``request.remote`` gives).
        """
        shape = self._shapes.get(query)
        if shape is None:
            shape = self._shape(query)
        if shape is False:
            return None
        engine = self.engine
        if "polling" not in engine.transports:
            return None
        if "upgrade" in headers:
            return None
        cors: dict[str, str] | None = None
        if engine.cors_allowed_origins != [] and ("origin" in headers or "access-control-request-headers" in headers):
            cors = cors_environ(method, headers)
            origin = cors.get("HTTP_ORIGIN")
            if origin:
                allowed = engine._cors_allowed_origins(cors)
                if allowed is not None and origin not in allowed:
                    return None  # the application answers 400, naming the origin
        sid, eio = shape
        if sid is None:
            if method != "GET" or eio != "4":
                return None
            if engine._per_ip.get(remote, 0) >= engine.max_connections_per_ip:
                return None  # the application answers 429
            return None, cors
        socket = engine.sockets.get(sid)
        if socket is None or not socket.connected or socket.upgraded or socket.closed:
            return None  # another node's, unknown, not connected yet, upgraded or ended
        return socket, cors

    def _shape(self, query: str) -> Any:
        """What ``route`` reads of a query: ``(sid, EIO)`` (each None when absent) of a polling
        request, False for any other (no ``transport=polling``, a JSONP ``j``, malformed).
        Remembered per distinct query (a session's requests repeat theirs), up to 4096."""
        params = parse_query(query)
        if params is None or params.get("transport") != "polling" or "j" in params:
            shape: Any = False
        else:
            shape = (params.get("sid"), params.get("EIO"))
        if len(self._shapes) >= 4096:
            self._shapes.clear()
        self._shapes[query] = shape
        return shape

    async def _handshake(self, request: web.BaseRequest, cors: dict[str, str] | None) -> web.StreamResponse:
        """A new polling session: the connect handlers get the full environ (they read headers
        and the request), as on the application's path."""
        engine = self.engine
        environ = engine._async["translate_request"](request)
        return self._response(await engine._handle_connect(environ, "polling"), request, cors, "GET")

    async def _session(self, request: web.BaseRequest, method: str, socket: Any,
                       cors: dict[str, str] | None) -> web.StreamResponse:
        """A long-poll GET or a POST of a live local polling session (RealtimeEngine._handle's
        checks, then python-engineio's GET/POST handling)."""
        engine = self.engine
        if method == "POST":
            answer = await self.post(request, socket)
            return self._response(engine._ok() if answer is None else answer, request, cors, method)
        sid = socket.sid
        refusal = await engine.check_polling(request, socket, method, True)
        if refusal is not None:
            return refusal
        engine._polling.add(sid)
        try:
            try:
                packets = await socket.handle_get_request({})
            except exceptions.EngineIOError:
                if sid in engine.sockets:
                    await engine.disconnect(sid)
                return self._response(engine._bad_request(), request, cors, method)
            if sid in engine.sockets and engine.sockets[sid].closed:
                del engine.sockets[sid]
            return self._response(engine._ok(packets), request, cors, method)
        finally:
            engine._polling.discard(sid)

    async def post(self, request: Any, socket: Any, body: bytes | None = None) -> Any:
        """A POST of a live local polling session, for both fronts: None when it is answered
        ``ok`` (python-engineio's ``_ok()``; HttpFront writes that one from a precomputed head),
        else python-engineio's answer (a dict) or RealtimeEngine's refusal (a ``web.Response``).

        :param request: what ``check_polling`` reads the body from (and puts its packets on).
        :param body: the whole body when the caller has read it already (HttpFront)."""
        engine = self.engine
        sid = socket.sid
        refusal = await engine.check_polling(request, socket, "POST", False, body)
        if refusal is not None:
            return refusal
        try:
            await socket.handle_post_request({"rt.packets": request["rt_packets"]})
        except exceptions.EngineIOError:
            if sid in engine.sockets:
                await engine.disconnect(sid)
            return engine._bad_request()
        except Exception:  # as python-engineio: logged, and the POST still answered
            log.exception("post request handler error")
        return None

    def _response(self, answer: Any, request: web.BaseRequest, cors: dict[str, str] | None,
                  method: str) -> web.StreamResponse:
        """python-engineio's answer (a dict of status, headers and body) as an aiohttp response,
        compressed and with CORS headers as its ``handle_request`` would make it."""
        if not isinstance(answer, dict):
            return answer
        status, headers, body = self.answer_parts(answer, request.headers.get("Accept-Encoding", ""), cors, method)
        return web.Response(body=body, status=status, headers=headers)

    def answer_parts(self, answer: dict, accept_encoding: str, cors: dict[str, str] | None,
                     method: str) -> tuple[int, list[tuple[str, str]], bytes]:
        """python-engineio's answer as ``(status, headers, body)``, compressed and with CORS
        headers as its ``handle_request`` would make it (for both fronts).

        :param accept_encoding: the request's Accept-Encoding header ("" without one).
        :param cors: the CORS environ ``route`` gave (None without an Origin header)."""
        engine = self.engine
        body = answer["response"]
        headers = answer["headers"]
        if engine.http_compression and len(body) >= engine.compression_threshold and accept_encoding:
            for encoding in (e.split(";")[0].strip() for e in accept_encoding.split(",")):
                if encoding in engine.compression_methods:
                    body = getattr(engine, "_" + encoding)(body)
                    headers = [*headers, ("Content-Encoding", encoding)]
                    break
        if engine.cors_allowed_origins != []:
            if cors is None:
                # Without Origin and Access-Control-Request-Headers the CORS headers are the
                # same for every GET and POST (Access-Control-Allow-Credentials at most).
                if self._plain_cors is None:
                    self._plain_cors = engine._cors_headers({"REQUEST_METHOD": method})
                headers = headers + self._plain_cors
            else:
                headers = headers + engine._cors_headers(cors)
        return int(answer["status"][:3]), headers, body


    def ok_head(self, content_type: str) -> bytes:
        """The head of a 200 answer of python-engineio's with this Content-Type, as
        ``answer_parts`` makes it for a request without Origin and uncompressed: the status line
        and the constant headers, up to (not including) Content-Length; made once."""
        head = self._ok_heads.get(content_type)
        if head is None:
            _status, headers, _body = self.answer_parts(
                {"status": "200 OK", "headers": [("Content-Type", content_type)], "response": b""}, "", None, "GET")
            head = ("HTTP/1.1 200 OK\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers)).encode("latin-1")
            self._ok_heads[content_type] = head
            if content_type == TEXT_PACKETS:
                self.payload_head = head
            elif content_type == "text/plain":
                self.post_head = head
        return head


def serve_polling_first(app: web.Application, front: PollingFront) -> None:
    """Make ``front`` the request handler of the low-level server aiohttp builds for ``app``
    (``web.run_app`` or an ``AppRunner``), with the application's own handler behind it.

    aiohttp builds that server in ``Application._make_handler`` when the application starts;
    this wraps that method on this one instance (server/library_pins.py lists it)."""
    make_handler = app._make_handler

    def _make_handler(**kwargs: Any) -> Any:
        server = make_handler(**kwargs)
        front.app_handler = server.request_handler
        server.request_handler = front.handle
        return server

    app._make_handler = _make_handler  # type: ignore[method-assign]
