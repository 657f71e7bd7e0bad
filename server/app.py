"""The application: one aiohttp server with the Socket.IO endpoint, the pages and the probes."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from socketio.msgpack_packet import MsgPackPacket

from . import __version__, assets
from .api import add_api
from .auth import Authenticator, Identity
from .bus import Bus, emit_handler
from .cluster import Cluster, new_node_tag
from .config import Config
from .endings import SHUTDOWN
from .forwarding import Forwarder
from .operations import ClusterOperations
from .http_front import serve_lean_http
from .polling import PollingFront, serve_polling_first
from .jsonmod import FastJson
from .manager import RealtimeManager
from .metrics import Metrics
from .realtime import RealtimeServer
from .stores import Stores, build_stores

log = logging.getLogger("server.app")

# Builds one application namespace for a runtime (each namespace module's ``create``).
NamespaceFactory = Callable[["Runtime"], Any]


@dataclass(frozen=True)
class Runtime:
    """What the namespaces, the server API and the HTTP handlers of one node use, built in one
    step by :func:`build_runtime` (no module-level state, nothing assigned after construction).
    The cluster modules do not see it: each gets its own dependencies there.

    :param config: the validated configuration.
    :param stores: the shared state (Redis, or embedded in memory).
    :param metrics: the node's Prometheus metrics.
    :param authenticator: checks tokens and identities on CONNECT.
    :param manager: the client manager (rooms, the event log's delivery).
    :param sio: the Socket.IO server.
    :param node_id: this node's id.
    :param bus: pub/sub between nodes; None without Redis.
    :param cluster: the node registry and request/reply between nodes.
    :param forwarder: relays requests for sessions other nodes own (the app's middleware).
    :param operations: cluster-wide socket operations (fetch, join, leave, disconnect, call).
    :param identities: who each connected socket is, by ``(namespace, sid)``; namespaces keep it.
    :param started: when this node started (a Unix time).
    :param namespaces: the application namespaces by name. Namespaces are created from the
        runtime, so they are added to this dict after it is built (:func:`register_namespaces`).
    :param tasks: background tasks, cancelled on cleanup (:meth:`background`).
    """

    config: Config
    stores: Stores
    metrics: Metrics
    authenticator: Authenticator
    manager: RealtimeManager
    sio: RealtimeServer
    node_id: str
    bus: Bus | None
    cluster: Cluster
    forwarder: Forwarder
    operations: ClusterOperations
    identities: dict[tuple[str, str], Identity]
    started: float
    namespaces: dict[str, Any] = field(default_factory=dict)
    tasks: list[asyncio.Task] = field(default_factory=list)
    version: str = __version__

    def background(self, coro: Any, name: str) -> None:
        self.tasks.append(asyncio.create_task(coro, name=name))


def build_runtime(config: Config) -> Runtime:
    """Compose one node, each part after what it depends on."""
    metrics = Metrics()
    stores = build_stores(config)
    node_id, prefix, started = config.node_id, config.redis.key_prefix, time.time()
    # The bus depends on Redis alone. The manager and the server publish on it and it hands
    # messages back to them: that cycle is closed by building the bus first, passing it to
    # both, and subscribing their handlers once they exist (bus.on below).
    bus = Bus(stores.redis, prefix, node_id, metrics) if stores.redis is not None else None
    durable = set(config.delivery.durable_namespaces) | ({"/bench"} if config.server.bench_namespace else set())
    # The tag starts every Engine.IO session id this node creates; the registry advertises it,
    # and the channels of this node's sockets route to it (realtime_channels.routes).
    tag = new_node_tag()
    manager = RealtimeManager(stores.channel_log, durable, metrics, bus=bus, route=tag)
    sio = build_sio(config, manager, stores, metrics, bus)
    if bus is not None:
        bus.on("emit", emit_handler(manager.deliver_local))
        bus.on("evict", _on_evict(sio))
    sio.eio.node_tag = tag
    cluster = Cluster(stores.redis, prefix, bus, node_id, advertised_address(config), tag,
                      sessions=sio.eio.sockets, started=started, version=__version__)
    forwarder = Forwarder(cluster, sio.eio.sockets, config.server.ping_interval, config.server.ping_timeout)
    identities: dict[tuple[str, str], Identity] = {}
    operations = ClusterOperations(cluster, sio, identities, config.limits.max_rooms_per_socket)
    return Runtime(config=config, stores=stores, metrics=metrics, authenticator=Authenticator(config.auth, node_tag=tag),
                   manager=manager, sio=sio, node_id=node_id, bus=bus, cluster=cluster, forwarder=forwarder,
                   operations=operations, identities=identities, started=started)


def build_sio(config: Config, manager: RealtimeManager, stores: Stores, metrics: Metrics,
              bus: Bus | None) -> RealtimeServer:
    """The Socket.IO server, configured from ``[server]``, ``[delivery]`` and ``[limits]``."""
    origins: Any = list(config.server.cors_origins)
    if origins == ["*"]:
        origins = "*"
    kwargs: dict[str, Any] = dict(
        async_mode="aiohttp",
        cors_allowed_origins=origins,
        cors_credentials=True,
        transports=list(config.server.transports),
        ping_interval=config.server.ping_interval,
        ping_timeout=config.server.ping_timeout,
        # No service task walking every session (a Task and a timer per session per
        # ping_timeout): server/engine_socket.py's PONG deadlines end silent sessions, and
        # RealtimeEngine forgets closed ones.
        monitor_clients=False,
        max_http_buffer_size=config.server.max_payload,
        http_compression=True,
        json=FastJson,
    )
    if config.server.parser == "msgpack":
        kwargs["serializer"] = MsgPackPacket
    sio = RealtimeServer(
        manager=manager, sessions=stores.sessions,
        max_disconnection_duration=config.delivery.max_disconnection_duration,
        limits=config.limits, metrics=metrics, connect_timeout=config.server.connect_timeout, bus=bus, **kwargs)
    # The engine is built inside AsyncServer.__init__: its settings can only be set on it after.
    sio.eio.websocket_compression = config.server.websocket_compression
    sio.eio.lean_websocket = config.server.lean_websocket  # server/websocket.py
    sio.eio.body_timeout = config.limits.body_timeout
    sio.eio.max_packets_per_payload = config.limits.max_packets_per_payload
    sio.eio.max_connections_per_ip = config.limits.max_connections_per_ip
    sio.eio.max_inflight_events = config.limits.max_inflight_events
    sio.eio.metrics = metrics
    return sio


def advertised_address(config: Config) -> str:
    """``host:port`` other nodes reach this one at (``server.advertise_address`` when set)."""
    import socket

    if config.server.advertise_address:
        return config.server.advertise_address
    host = config.server.host
    if host in ("0.0.0.0", "::", ""):
        try:
            host = socket.gethostbyname(socket.gethostname())
        except OSError:
            host = "127.0.0.1"
    return f"{host}:{config.server.port}"


def _on_evict(sio: RealtimeServer):
    async def handler(message: dict[str, Any]) -> None:
        pid = message.get("pid")
        if isinstance(pid, str):
            await sio.evict(pid)
    return handler


def register_namespaces(runtime: Runtime, factories: Sequence[NamespaceFactory]) -> None:
    for create in factories:
        ns = create(runtime)
        runtime.namespaces[ns.namespace] = ns
        runtime.sio.register_namespace(ns)


# ---------------------------------------------------------------------- HTTP handlers


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "node": request.app["runtime"].node_id})


async def readyz(request: web.Request) -> web.Response:
    runtime: Runtime = request.app["runtime"]
    problems = []
    if await runtime.stores.ping() is None:
        problems.append("redis unreachable")
    if not runtime.manager.follower_healthy:
        problems.append("channel log unreadable")
    if runtime.cluster.draining or runtime.sio.shutting_down:
        problems.append("draining")
    body = {"status": "ready" if not problems else "not ready", "node": runtime.node_id, "problems": problems}
    return web.json_response(body, status=200 if not problems else 503)


async def metrics_handler(request: web.Request) -> web.Response:
    runtime: Runtime = request.app["runtime"]
    _update_gauges(runtime)
    return web.Response(body=runtime.metrics.render(), content_type="text/plain", charset="utf-8")


def _update_gauges(runtime: Runtime) -> None:
    m = runtime.metrics
    m.connections.clear()
    counts: dict[tuple[str, str], int] = {}
    queued = 0
    for (namespace, sid) in list(runtime.identities):
        eio_sid = runtime.manager.eio_sid_from_sid(sid, namespace)
        socket = runtime.sio.eio.sockets.get(eio_sid) if eio_sid else None
        if socket is None:
            continue
        transport = "websocket" if socket.upgraded else "polling"
        counts[(namespace, transport)] = counts.get((namespace, transport), 0) + 1
    for socket in list(runtime.sio.eio.sockets.values()):
        queued += socket.queue.qsize()
    for (namespace, transport), n in counts.items():
        m.connections.labels(namespace, transport).set(n)
    m.send_queue.set(queued)
    sio = runtime.sio
    tables = {"engineio_sessions": len(sio.eio.sockets), "environ": len(sio.environ),
              "binary_packets": len(sio._binary_packet), "rate_buckets": len(sio._buckets),
              "recovery_states": len(sio.csr), "identities": len(runtime.identities),
              "per_ip": sum(sio.eio._per_ip.values()), "http_requests": sio.eio.requests_in_flight,
              "websocket_transports": len(sio.eio._websockets)}
    # The embedded stores' sizes (Redis keeps its own counts).
    for table, store in (("dedupe_entries", runtime.stores.idempotency), ("pending_messages", runtime.stores.pending)):
        size = getattr(store, "size", None)
        if size is not None:
            tables[table] = size()
    channels = getattr(runtime.manager.log, "channel_count", None)
    if channels is not None:
        tables["channels"] = channels
    tables["channel_cursors"] = len(runtime.manager.deliveries.cursors)
    tables["channels_unopened"] = runtime.manager.unopened_count
    # Read here, at the scrape, rather than counted as channels open and close: the connect
    # path then pays nothing for it (an inc is four Python calls).
    m.channels_subscribed.set(tables["channel_cursors"])
    tables["socket_positions"] = len(runtime.manager.positions)
    for table, size in tables.items():
        m.internal.labels(table).set(size)


async def _probe_redis(runtime: Runtime) -> None:
    while True:
        rtt = await runtime.stores.ping()
        if rtt is None:
            runtime.metrics.redis_errors.inc()
        else:
            runtime.metrics.redis_rtt.observe(rtt)
        await asyncio.sleep(5)


def _node_modules(request: web.Request) -> Path:
    """The node_modules folder the browser assets are served from (``server.assets_dir``)."""
    return assets.node_modules(request.app["runtime"].config.server.assets_dir).resolve()


def _inside(path: Path, folder: Path) -> bool:
    """``path`` is a file within ``folder`` (no ``..`` or symlink leads out of it)."""
    return path.is_relative_to(folder) and path.is_file()


def not_found(request: web.Request, why: str = "") -> web.HTTPNotFound:
    """A 404 with a short plain-text body naming the path (and why, when it is not just absent)."""
    return web.HTTPNotFound(text=f"404 Not Found: {request.path}{': ' + why if why else ''}\n")


def vendor_handler(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    first, _, rest = name.partition("/")
    if first not in assets.VENDOR_FILES:
        raise not_found(request)
    root = _node_modules(request)
    base = (root / assets.VENDOR_FILES[first]).resolve()
    if not base.exists():
        raise not_found(request, f"{first} not installed: run the set-up command (make install)")
    path = (base / rest).resolve() if rest else base
    if rest and not path.suffix and not path.is_file():
        # Bare ES module specifiers (``lib0/observable``) map here through the page's import map.
        path = path.with_name(path.name + ".js")
    if not _inside(path, root):
        raise not_found(request)
    return web.FileResponse(path, headers={"Cache-Control": "public, max-age=3600"})


def web_handler(request: web.Request) -> web.StreamResponse:
    """A file of ``web/`` (the pages). Instead of aiohttp's static route, whose 404 for a
    missing file is an empty ``application/octet-stream``, a missing file gets :func:`not_found`."""
    path = (assets.WEB_DIR / request.match_info["path"]).resolve()
    if not _inside(path, assets.WEB_DIR.resolve()):
        raise not_found(request)
    return web.FileResponse(path)


ADMIN_UI_PRESET = """<script>
// Preconfigured for this server: its own origin, namespace /admin (operators may change them).
if (!localStorage.getItem("server_url")) localStorage.setItem("server_url", location.origin);
if (!localStorage.getItem("namespace")) localStorage.setItem("namespace", "/admin");
</script>"""


# The Admin UI's index.html links Roboto and Material Design Icons from CDNs: offline or
# air-gapped, every icon button would be a blank box (and the narrow layout's menu invisible).
# They are rewritten to the same files from npm packages (assets.ADMIN_UI_ASSETS).
_CDN_ROBOTO = re.compile(r'<link rel="stylesheet" href="https://fonts\.googleapis\.com/css\?family=Roboto:([0-9,]+)">')
_CDN_MDI = re.compile(r'<link rel="stylesheet" href="https://cdn\.jsdelivr\.net/npm/@mdi/font@[^/"]*'
                      r'/css/materialdesignicons\.min\.css">')


def admin_ui_index(html: str) -> str:
    """The Admin UI's ``index.html`` as served: preset for this server, fonts from this server.

    :param html: the file as the npm package ships it.
    """
    def roboto(match: re.Match) -> str:
        return "".join(f'<link rel="stylesheet" href="/admin-ui-assets/roboto/{weight}.css">'
                       for weight in match.group(1).split(","))

    html = _CDN_ROBOTO.sub(roboto, html)
    html = _CDN_MDI.sub('<link rel="stylesheet" href="/admin-ui-assets/mdi/css/materialdesignicons.min.css">', html)
    return html.replace("<head>", "<head>" + ADMIN_UI_PRESET, 1)


def admin_ui_handler(request: web.Request) -> web.StreamResponse:
    base = (_node_modules(request) / assets.ADMIN_UI_DIR).resolve()
    rest = request.match_info.get("path") or "index.html"
    if not (base / "index.html").is_file():
        raise not_found(request, "Admin UI not installed: run the set-up command (make run / make test)")
    path = (base / rest).resolve()
    if not _inside(path, base):
        raise not_found(request)
    if rest == "index.html":
        return web.Response(text=admin_ui_index(path.read_text()), content_type="text/html")
    return web.FileResponse(path)


def admin_ui_asset_handler(request: web.Request) -> web.StreamResponse:
    """``/admin-ui-assets/<package>/<file>``: a stylesheet or font of the Admin UI's font packages."""
    package = assets.ADMIN_UI_ASSETS.get(request.match_info["package"])
    if package is None:
        raise not_found(request)
    base = (_node_modules(request) / package).resolve()
    path = (base / request.match_info["path"]).resolve()
    if path.suffix not in assets.ADMIN_UI_ASSET_SUFFIXES or not _inside(path, base):
        raise not_found(request)
    return web.FileResponse(path, headers={"Cache-Control": "public, max-age=3600"})


async def index_redirect(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(assets.WEB_DIR / "index.html")


# ---------------------------------------------------------------------- lifecycle


async def on_startup(app: web.Application) -> None:
    runtime: Runtime = app["runtime"]
    runtime.sio.manager_initialized = True
    runtime.manager.initialize()
    runtime.manager.start()
    if runtime.bus is not None:
        await runtime.bus.start()
    await runtime.cluster.start()
    if runtime.stores.shared:
        await runtime.forwarder.start()
    runtime.background(_sweep_stores(runtime), "store-sweep")
    runtime.background(runtime.sio.session_heartbeat(), "session-heartbeat")
    if runtime.stores.shared:
        runtime.background(_probe_redis(runtime), "redis-probe")
    await runtime.authenticator.start(runtime.stores.redis, runtime.config.redis.key_prefix)
    for ns in runtime.namespaces.values():
        start = getattr(ns, "start", None)
        if start is not None:
            await start()
        if hasattr(ns, "expire_sessions") and ns.namespace != "/admin":
            runtime.background(ns.expire_sessions(), f"expire-sessions-{ns.namespace}")
    admin = runtime.namespaces.get("/admin")
    if admin is not None and not admin._enabled():
        # Otherwise an operator only ever sees "invalid credentials" in the Admin UI.
        log.warning("/admin is disabled: no operator password is set (admin.password or admin.password_hash "
                    "in config.toml, or $ADMIN_PASSWORD); the Admin UI cannot log in")
    log.info("node %s ready (%s, %s parser, durable: %s)", runtime.node_id,
             "redis" if runtime.stores.shared else "embedded in-memory state", runtime.config.server.parser,
             ", ".join(sorted(runtime.manager.durable)) or "none")
    log.info("%s", banner(runtime.config))


def banner(config: Config) -> str:
    """Where everything is, for the person who just started the server."""
    host = config.server.host if config.server.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    base = f"http://{host}:{config.server.port}"
    lines = []
    if config.server.pages:
        lines += [f"  demos       {base}/  (chat {base}/chat.html, game {base}/game.html, editor {base}/collab.html)",
                  f"  Admin UI    {base}/admin-ui/"]
    lines += [f"  metrics     {base}/metrics", f"  probes      {base}/healthz {base}/readyz",
              f"  server API  {base}/api/v1/" + ("" if config.api.keys else "  (off: no keys in [api] or $API_KEYS)")]
    return "open:\n" + "\n".join(lines)


async def _sweep_stores(runtime: Runtime) -> None:
    """Every store's age limit, enforced on a timer whether or not anyone reads or is online:
    channel publications older than ``log_max_age`` (and channels idle that long), dedupe entries
    past their TTL, direct messages past ``direct_ttl``."""
    d = runtime.config.delivery
    # At least twice per limit, so nothing outlives its limit by more than half of it.
    interval = max(0.1, min(30.0, d.log_max_age / 2, d.dedupe_ttl / 2, d.direct_ttl / 2))
    stores = runtime.stores
    sweeps = (("channel log", runtime.manager.log.trim_expired), ("dedupe", stores.idempotency.sweep),
              ("direct messages", lambda: stores.pending.sweep(d.direct_ttl)))
    while True:
        await asyncio.sleep(interval)
        for name, sweep in sweeps:
            try:
                await sweep()
            except Exception as exc:  # Redis away: the next round catches up
                log.debug("%s sweep failed: %s", name, exc)


async def on_shutdown(app: web.Application) -> None:
    """Graceful stop: refuse new namespace connections, save every socket's session for
    recovery, close transports (clients reconnect, to another node when there is one)."""
    runtime: Runtime = app["runtime"]
    runtime.sio.shutting_down = True
    deadline = runtime.config.server.shutdown_timeout
    sockets = list(runtime.sio.eio.sockets)
    log.info("shutting down: closing %d connections", len(sockets))

    async def close_all() -> None:
        await asyncio.gather(*(runtime.sio.end(sid, SHUTDOWN) for sid in sockets), return_exceptions=True)
        # Give writer tasks a moment to flush.
        await asyncio.sleep(0.1)

    try:
        await asyncio.wait_for(close_all(), timeout=max(0.1, deadline))
    except asyncio.TimeoutError:
        log.warning("shutdown timeout reached with connections still closing")


async def on_cleanup(app: web.Application) -> None:
    runtime: Runtime = app["runtime"]
    for ns in runtime.namespaces.values():
        stop = getattr(ns, "stop", None)
        if stop is not None:
            await stop()
    for task in runtime.tasks:
        task.cancel()
    await asyncio.gather(*runtime.tasks, return_exceptions=True)
    await runtime.cluster.stop()
    await runtime.forwarder.stop()
    if runtime.bus is not None:
        await runtime.bus.stop()
    await runtime.manager.stop()
    await runtime.stores.close()


def create_app(config: Config, namespaces: Sequence[NamespaceFactory] = ()) -> web.Application:
    """The application of one node.

    :param config: the validated configuration.
    :param namespaces: ``create(runtime)`` of each application namespace to serve; the entry
        point composes them (``namespaces.factories``), so this package never imports them.
    """
    runtime = build_runtime(config)
    register_namespaces(runtime, namespaces)
    app = web.Application(client_max_size=config.server.max_payload + 4096,
                          middlewares=[runtime.forwarder.middleware])
    app["runtime"] = runtime
    runtime.sio.attach(app, socketio_path="socket.io")
    # Other methods reach the engine too, which answers them 400 as the spec says (not 405).
    for method in ("PUT", "DELETE", "PATCH"):
        app.router.add_route(method, "/socket.io/", runtime.sio.handle_request)
    # Long-polling GETs and POSTs are answered before the application's router and middlewares
    # (server/polling.py); everything else, and any polling request out of the ordinary, reaches it.
    front = PollingFront(runtime.sio.eio, path="/socket.io/")
    runtime.metrics.registry.register(front)  # rt_http_requests_total{path="lean"|"app"}
    serve_polling_first(app, front)
    serve_lean_http(app, front)  # and our own Protocol in front of aiohttp's (server/http_front.py)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    add_api(app, runtime)  # /api/v1/: the server API (server/api.py); answers api_disabled without keys
    if config.server.pages:  # off: a backend only (load_config checked the files are there when on)
        app.router.add_get("/vendor/{name:.+}", vendor_handler)
        app.router.add_get("/admin-ui", lambda r: web.HTTPFound("/admin-ui/"))
        app.router.add_get("/admin-ui/{path:.*}", admin_ui_handler)
        app.router.add_get("/admin-ui-assets/{package}/{path:.+}", admin_ui_asset_handler)
        app.router.add_get("/", index_redirect)
        app.router.add_get("/{path:.+}", web_handler)
    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app


def json_log_formatter() -> logging.Formatter:
    class JsonFormatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            body = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
                    "msg": record.getMessage()}
            if record.exc_info:
                body["exc"] = self.formatException(record.exc_info)
            return json.dumps(body)

    return JsonFormatter()


class MalformedHttpFilter(logging.Filter):
    """aiohttp logs each request it cannot parse (a negative Content-Length, Content-Length
    with chunked encoding, a 70 KB header, ...) as an ERROR with a traceback, after answering
    it 400: anyone could flood the log. Such a record becomes one short warning line, at most
    one per ``interval`` seconds; the next line logged says how many were left out.

    :param interval: seconds between two such lines (0: every request gets its line).
    """

    def __init__(self, interval: float) -> None:
        super().__init__()
        self.interval = interval
        self.next_at = 0.0
        self.left_out = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True  # an error in a handler keeps its traceback
        now = time.monotonic()
        if now < self.next_at:
            self.left_out += 1
            return False
        self.next_at = now + self.interval
        # The parser's message quotes the offending bytes (escaped) under a first line that names the fault.
        reason = (str(exc.message).splitlines() or [""])[0].rstrip(": ")[:100]
        reason = "".join(c if c.isprintable() else "?" for c in reason)
        peer = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        record.msg = "malformed HTTP request from %s, answered %s: %s%s"
        record.args = (peer, exc.code, reason,
                       f" ({self.left_out} more since the last line)" if self.left_out else "")
        record.exc_info = record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        self.left_out = 0
        return True


def configure_logging(config: Config) -> None:
    handler = logging.StreamHandler()
    if config.server.log_format == "json":
        handler.setFormatter(json_log_formatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.server.log_level.upper())
    # python-socketio/engineio log every packet at INFO, CONNECT payloads (tokens) included:
    # they stay at WARNING whatever the level, so no secret reaches the logs. Their
    # ``*.server`` loggers get a level of their own too: left unset, each library adds a
    # handler of its own there and every line they log is written twice.
    for name in ("socketio", "socketio.server", "engineio", "engineio.server", "aiohttp.access"):
        logging.getLogger(name).setLevel(logging.WARNING)
    server_log = logging.getLogger("aiohttp.server")
    server_log.filters[:] = [MalformedHttpFilter(config.server.bad_request_log_interval)]


def version() -> str:
    return __version__
