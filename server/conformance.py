"""The conformance profile: exactly what the official Engine.IO v4 and Socket.IO v5 protocol
test suites expect (``python -m server --conformance``). Never part of a production app.

- Socket.IO at ``/socket.io/`` with namespaces ``/`` and ``/custom`` only; right after the
  CONNECT ack the server emits ``auth`` with the CONNECT payload (``{}`` when there was
  none); ``message`` is answered by ``message-back`` with the same arguments (binary
  included); ``message-with-ack`` is acked with its arguments.
- A raw Engine.IO echo server at ``/engine.io/``.
- Test-only timings: ping interval 300 ms, ping timeout 200 ms; max payload 1 000 000; CORS ``*``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from .adapter import NamespaceAdapter
from .config import load_config
from realtime_channels.channel_log import MemoryChannelLog
from .manager import RealtimeManager
from .metrics import Metrics
from .polling import PollingFront, serve_polling_first
from .realtime import RealtimeEngine, RealtimeServer
from .sessions import MemorySessionStore

TIMINGS = dict(ping_interval=0.3, ping_timeout=0.2, max_http_buffer_size=1_000_000)


class EchoNamespace(NamespaceAdapter):
    async def handle_event(self, event: str, *args: Any) -> Any:
        if event == "connect":
            sid, _, auth = (list(args) + [None, None, None])[:3]
            # A CONNECT without payload reaches the suite's handler as `{}` (the reference
            # server's socket.handshake.auth), so it gets `42["auth",{}]`.
            # After the CONNECT ack, which the server queues before this task runs.
            asyncio.get_running_loop().call_soon(
                asyncio.ensure_future, self.emit("auth", auth if auth is not None else {}, to=sid))
            return True
        if event == "disconnect":
            return None
        sid, data = args[0], args[1:]
        if event == "message":
            await self.emit("message-back", tuple(data), to=sid)
            return None
        if event == "message-with-ack":
            return tuple(data)
        return None


def create_conformance_app() -> web.Application:
    config = load_config(None, {}).with_overrides(
        server={"cors_origins": ("*",), "ping_interval": TIMINGS["ping_interval"],
                "ping_timeout": TIMINGS["ping_timeout"], "max_payload": TIMINGS["max_http_buffer_size"]},
        delivery={"durable_namespaces": ()})
    metrics = Metrics()
    manager = RealtimeManager(lambda on_publication, on_resync: MemoryChannelLog(
        on_publication=on_publication, on_resync=on_resync), (), metrics)
    sio = RealtimeServer(manager=manager, sessions=MemorySessionStore(), max_disconnection_duration=120,
                         limits=config.limits, metrics=metrics, connect_timeout=45, async_mode="aiohttp",
                         cors_allowed_origins="*", monitor_clients=False, **TIMINGS)
    for name in ("/", "/custom"):
        sio.register_namespace(EchoNamespace(name))

    # (no python-engineio service task, as server/app.py: the PONG deadlines enforce the heartbeat)
    eio = RealtimeEngine(async_mode="aiohttp", cors_allowed_origins="*", monitor_clients=False, **TIMINGS)

    @eio.on("message")
    async def echo(sid: str, data: Any) -> None:
        await eio.send(sid, data)

    app = web.Application()
    sio.attach(app, socketio_path="socket.io")
    eio.attach(app, engineio_path="engine.io")
    for method in ("PUT", "DELETE", "PATCH"):
        app.router.add_route(method, "/socket.io/", sio.handle_request)
        app.router.add_route(method, "/engine.io/", eio.handle_request)

    # Long-polling through the lean path, as in the production app (so these suites test it).
    serve_polling_first(app, PollingFront(sio.eio, path="/socket.io/"))
    serve_polling_first(app, PollingFront(eio, path="/engine.io/"))

    async def started(app: web.Application) -> None:
        sio.manager_initialized = True
        manager.initialize()

    async def stopped(app: web.Application) -> None:
        await manager.stop()

    app.on_startup.append(started)
    app.on_cleanup.append(stopped)
    return app
