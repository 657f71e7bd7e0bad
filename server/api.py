"""The HTTP server API under ``/api/v1/``: publish, batch, history, presence, sockets, join,
leave, disconnect — for the application's backend, on every node, JSON in and out.

Every request presents ``Authorization: Bearer <key>`` (``[api] keys``); it is answered under
the key's *name* (logs, metrics) and limited per key. Errors are ``{"error": {"code",
"message", "field"?}}`` with a fitting 4xx/5xx status. With no key configured the API is off:
every request under ``/api/v1/`` gets 404 ``api_disabled``.

The routes are :data:`ROUTES`; the OpenAPI document (``server/api_schema.py``, served at
``/api/v1/openapi.json``) describes each, and ``tests/test_api.py`` checks the two agree.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import orjson
from aiohttp import web
from redis.exceptions import RedisError

from . import api_params as p
from .api_keys import KeyBusy, KeyRing, RateLimiter, retry_after
from .api_params import ApiError
from .api_schema import openapi_document
from .endings import USER_DISCONNECTED
from .namespace import counted_rooms
from .publisher import ROOM_PREFIX, PublishConflict, Publisher, Target
from .room_history import read_history

if TYPE_CHECKING:
    from .app import Runtime

log = logging.getLogger("server.api")

PREFIX = "/api/v1"
MAX_HISTORY = 200
MAX_SOCKETS = 10_000
# Failures of shared state (Redis unreachable, no pool connection free in time): 503, retry.
STORE_ERRORS = (RedisError, OSError, TimeoutError)
# Lines for requests without a valid key (anyone can send those): at most one per interval.
UNAUTHENTICATED_LOG_INTERVAL = 1.0


@dataclass
class Caller:
    """One authenticated request: the runtime, the publisher and the key's name."""

    runtime: "Runtime"
    publisher: Publisher
    key: str


Command = Callable[[Caller, dict[str, Any]], Awaitable[dict[str, Any]]]


# ---------------------------------------------------------------------- operations


async def publish(caller: Caller, params: dict[str, Any]) -> dict[str, Any]:
    """``{namespace, room | to | user, event, args, idempotency_key?}`` → ``{offset, epoch, duplicate}``."""
    p.only(params, ("namespace", "room", "to", "user", "event", "args", "idempotency_key"))
    namespace = p.namespace(params)
    target = p.target(params, {"room": "room", "to": "sid", "user": "user"})
    event, args, key = p.event(params), p.args(params), p.idempotency_key(params)
    limit = caller.runtime.config.limits.max_event_bytes
    if len(orjson.dumps([event, *args])) > limit:
        # The cap a client's event has (limits.max_event_bytes) holds for a published one too.
        raise ApiError(413, "payload_too_large", f"args: the event is limited to {limit} bytes of JSON", "args")
    try:
        result = await caller.publisher.publish(namespace, target, event, args,
                                                None if key is None else f"api:{caller.key}:{key}")
    except PublishConflict as exc:
        raise ApiError(409, exc.code, exc.message, "idempotency_key") from None
    return {"offset": result.offset, "epoch": result.epoch, "duplicate": result.duplicate}


async def history(caller: Caller, params: dict[str, Any]) -> dict[str, Any]:
    """``{namespace, room, since?, limit?}`` → ``{events, offset, epoch, complete}`` of a /chat room."""
    p.only(params, ("namespace", "room", "since", "limit"))
    p.namespace(params, ("/chat",))
    room = p.room(params) or ""
    since, limit = p.offset(params, "since"), p.integer(params, "limit", 50, 1, MAX_HISTORY)
    found = await read_history(caller.runtime.manager.log, room, after=since, limit=limit)
    return {"events": [{"offset": m["seq"], "event": "message", "args": [m]} for m in found.messages],
            "offset": found.position.offset, "epoch": found.position.epoch, "complete": found.complete}


async def presence(caller: Caller, params: dict[str, Any]) -> dict[str, Any]:
    """``{namespace, room}`` → ``{members: [{user, name}]}`` of a /chat room, every node."""
    p.only(params, ("namespace", "room"))
    namespace = p.namespace(params, ("/chat",))
    room = p.room(params) or ""
    members = await caller.runtime.stores.presence.members(namespace, room)
    return {"members": [{"user": m.user, "name": m.name} for m in members]}


async def sockets(caller: Caller, params: dict[str, Any]) -> dict[str, Any]:
    """``{namespace, room?, limit?}`` → ``{sockets, truncated}``: the sockets on every node."""
    p.only(params, ("namespace", "room", "limit"))
    namespace = p.namespace(params)
    room = p.room(params, required=False)
    limit = p.integer(params, "limit", 1000, 1, MAX_SOCKETS)
    found = await caller.runtime.operations.fetch_sockets(
        namespace, None if room is None else Target("room", room).socketio_room(namespace))
    found.sort(key=lambda s: (str(s.get("node")), str(s.get("id"))))
    prefix = ROOM_PREFIX[namespace]
    out = []
    for s in found[:limit]:
        data = s.get("data") or {}
        out.append({"sid": s.get("id"), "namespace": namespace, "node": s.get("node"), "user": data.get("user"),
                    "name": data.get("name"), "transport": s.get("transport"),
                    "rooms": sorted(r[len(prefix):] for r in s.get("rooms", []) if r.startswith(prefix))})
    return {"sockets": out, "truncated": len(found) > limit}


async def join(caller: Caller, params: dict[str, Any]) -> dict[str, Any]:
    """``{namespace, room, sid | user}`` → ``{count}``: those sockets join the room, every node.
    None joins when one of them is in ``limits.max_rooms_per_socket`` rooms already (409)."""
    return await _room_op(caller, params, join=True)


async def leave(caller: Caller, params: dict[str, Any]) -> dict[str, Any]:
    """``{namespace, room, sid | user}`` → ``{count}``: those sockets leave the room, every node."""
    return await _room_op(caller, params, join=False)


async def _room_op(caller: Caller, params: dict[str, Any], join: bool) -> dict[str, Any]:
    p.only(params, ("namespace", "room", "sid", "user"))
    namespace = p.namespace(params)
    room = Target("room", p.room(params) or "").socketio_room(namespace)
    who = p.target(params, {"sid": "sid", "user": "user"}).socketio_room(namespace)
    operations = caller.runtime.operations
    if not join:
        return {"count": await operations.sockets_leave(namespace, room, who)}
    # The cap a client's own join has holds here too. Checked first, so the request is refused
    # whole rather than half done (a client joining at the same moment may still pass it by one).
    limit = caller.runtime.config.limits.max_rooms_per_socket
    full = [s for s in await operations.fetch_sockets(namespace, who)
            if room not in s.get("rooms", ()) and len(counted_rooms(s.get("rooms", ()), s.get("id"))) >= limit]
    if full:
        raise ApiError(409, "too_many_rooms", f"room: {len(full)} of these sockets are in {limit} rooms already "
                       f"(limits.max_rooms_per_socket); none joined", "room")
    return {"count": await operations.sockets_join(namespace, room, who)}


async def disconnect(caller: Caller, params: dict[str, Any]) -> dict[str, Any]:
    """``{sid | user, namespace?}`` → ``{count}``: those sockets are disconnected on every node,
    for good (no recovery); without ``namespace`` in every application namespace."""
    p.only(params, ("namespace", "sid", "user"))
    namespaces = [p.namespace(params)] if params.get("namespace") is not None else list(ROOM_PREFIX)
    who = p.target(params, {"sid": "sid", "user": "user"})
    count = 0
    for namespace in namespaces:
        count += await caller.runtime.operations.disconnect_sockets(
            namespace, who.socketio_room(namespace), ending=USER_DISCONNECTED)
    return {"count": count}


COMMANDS: dict[str, Command] = {"publish": publish, "history": history, "presence": presence,
                                "sockets": sockets, "join": join, "leave": leave, "disconnect": disconnect}


async def batch(caller: Caller, body: dict[str, Any], limiter: RateLimiter) -> dict[str, Any]:
    """``{commands: [{method, params}]}`` → ``{results: [{status, result} | {status, error}]}``,
    run one after the other, in order; one command failing does not stop the others."""
    p.only(body, ("commands",))
    commands = body.get("commands")
    most = caller.runtime.config.api.max_batch_commands
    if not isinstance(commands, list) or not commands:
        raise p.bad("commands", "a non-empty list of {method, params}")
    if len(commands) > most:
        raise p.bad("commands", f"at most {most} commands in one batch", "too_many_commands")
    wait = limiter.take(caller.key, len(commands) - 1)  # the request itself took one already
    if wait:
        raise ApiError(429, "rate_limited", f"a batch of {len(commands)} commands is over this key's request "
                       f"rate; retry later", headers={"Retry-After": retry_after(wait)})
    results = []
    for i, command in enumerate(commands):
        try:
            if not isinstance(command, dict):
                raise p.bad(f"commands[{i}]", "an object {method, params}")
            p.only(command, ("method", "params"))
            method, params = command.get("method"), command.get("params", {})
            if method not in COMMANDS:
                raise p.bad("method", f"one of {', '.join(COMMANDS)}, got {p.echo(method)}", "unknown_method")
            if not isinstance(params, dict):
                raise p.bad("params", "an object")
            results.append({"status": 200, "result": await COMMANDS[method](caller, params)})
        except Exception as exc:  # noqa: BLE001 - every failure becomes that command's answer
            error = _as_api_error(exc, f"batch command {i}")
            results.append({"status": error.status, **error.body()})
    return {"results": results}


# ---------------------------------------------------------------------- HTTP


def _as_api_error(exc: BaseException, what: str) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, STORE_ERRORS):
        log.warning("api %s failed, store unavailable: %s", what, exc)
        return ApiError(503, "unavailable", "temporarily unavailable, retry", headers={"Retry-After": "1"})
    log.exception("api %s failed", what)
    return ApiError(500, "internal", "internal error")


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, headers=headers, content_type="application/json")


class Api:
    """The API of one node.

    :param runtime: the node's runtime (config ``[api]``, metrics, stores, operations).
    """

    def __init__(self, runtime: "Runtime") -> None:
        self.runtime = runtime
        self.config = runtime.config.api
        self.keys = KeyRing(self.config.keys)
        self.limiter = RateLimiter(self.config.requests_per_second, self.config.burst)
        self.publisher = Publisher(runtime)
        self._log_next = 0.0
        self._log_left_out = 0

    # -------------------------------------------------------------- routes

    async def publish(self, request: web.Request) -> web.Response:
        return _json(await publish(request["caller"], await self._body(request)))

    async def batch(self, request: web.Request) -> web.Response:
        return _json(await batch(request["caller"], await self._body(request), self.limiter))

    async def history(self, request: web.Request) -> web.Response:
        return _json(await history(request["caller"], dict(request.query)))

    async def presence(self, request: web.Request) -> web.Response:
        return _json(await presence(request["caller"], dict(request.query)))

    async def sockets(self, request: web.Request) -> web.Response:
        return _json(await sockets(request["caller"], dict(request.query)))

    async def join(self, request: web.Request) -> web.Response:
        return _json(await join(request["caller"], await self._body(request)))

    async def leave(self, request: web.Request) -> web.Response:
        return _json(await leave(request["caller"], await self._body(request)))

    async def disconnect(self, request: web.Request) -> web.Response:
        return _json(await disconnect(request["caller"], await self._body(request)))

    async def openapi(self, request: web.Request) -> web.Response:
        return _json(openapi_document())

    async def _body(self, request: web.Request) -> dict[str, Any]:
        return await p.read_json(request, self.config.max_body_bytes, self.runtime.config.limits.body_timeout)

    # -------------------------------------------------------------- every request

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        started = time.perf_counter()
        key = "-"
        route = _route(request)
        try:
            key = await self._authenticate(request)
            wait = self.limiter.take(key)
            if wait:
                raise ApiError(429, "rate_limited", "too many requests for this key; retry later",
                               headers={"Retry-After": retry_after(wait)})
            request["caller"] = Caller(self.runtime, self.publisher, key)
            response = await handler(request)
        except web.HTTPNotFound:
            response = self._error(ApiError(404, "not_found",
                                            f"no such API route: {request.method} {request.path[:128]}"))
        except web.HTTPMethodNotAllowed as exc:
            allowed = ", ".join(sorted(exc.allowed_methods))
            response = self._error(ApiError(405, "method_not_allowed", f"{request.path[:128]} takes {allowed}",
                                            headers={"Allow": allowed}))
        except Exception as exc:  # noqa: BLE001 - every failure is answered as JSON
            response = self._error(_as_api_error(exc, f"{request.method} {route}"))
        self.runtime.metrics.api_requests.labels(key, route, str(response.status)).inc()
        self._log(key, request.method, route, response.status, time.perf_counter() - started)
        return response

    async def _authenticate(self, request: web.Request) -> str:
        if not self.keys.enabled:
            raise ApiError(404, "api_disabled", "the server API is disabled: no API key is configured "
                           "([api] keys or $API_KEYS)")
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        challenge = {"WWW-Authenticate": 'Bearer realm="api"'}
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented:
            raise ApiError(401, "unauthorized", "missing API key: send Authorization: Bearer <key>", headers=challenge)
        try:
            name = await self.keys.name_of(presented) if len(presented) <= 256 else None
        except KeyBusy:
            raise ApiError(429, "busy", "too many key checks waiting; retry later", headers={"Retry-After": "1"}) \
                from None
        if name is None:
            raise ApiError(401, "unauthorized", "unknown API key", headers=challenge)
        return name

    def _error(self, error: ApiError) -> web.Response:
        return _json(error.body(), error.status, error.headers)

    def _log(self, key: str, method: str, route: str, status: int, seconds: float) -> None:
        """One line per request, naming the key by its name (never the key itself). Requests
        without a valid key get at most one line per interval: anyone can send those."""
        if key == "-":
            now = time.monotonic()
            if now < self._log_next:
                self._log_left_out += 1
                return
            self._log_next = now + UNAUTHENTICATED_LOG_INTERVAL
        more = f" ({self._log_left_out} more without a valid key since the last line)" \
            if key == "-" and self._log_left_out else ""
        if key == "-":
            self._log_left_out = 0
        log.info("api key=%s %s %s -> %d %.1fms%s", key, method, route, status, seconds * 1000, more)


def _route(request: web.Request) -> str:
    """The route's path for metrics and logs (never the raw path: labels stay bounded)."""
    info = request.match_info
    if info.http_exception is not None or info.route.resource is None:
        return "unmatched"
    return info.route.resource.canonical


# (method, path under PREFIX, name of the Api method): what is served, and what the OpenAPI
# document must describe.
ROUTES: list[tuple[str, str, str]] = [
    ("POST", "/publish", "publish"),
    ("POST", "/batch", "batch"),
    ("GET", "/history", "history"),
    ("GET", "/presence", "presence"),
    ("GET", "/sockets", "sockets"),
    ("POST", "/join", "join"),
    ("POST", "/leave", "leave"),
    ("POST", "/disconnect", "disconnect"),
    ("GET", "/openapi.json", "openapi"),
]


def add_api(app: web.Application, runtime: "Runtime") -> None:
    """Serve the API under ``/api/v1/`` of ``app`` (a sub-application with its own middleware)."""
    api = Api(runtime)
    sub = web.Application(middlewares=[api.middleware])
    for method, path, name in ROUTES:
        sub.router.add_route(method, path, getattr(api, name))
    app.add_subapp(PREFIX, sub)
