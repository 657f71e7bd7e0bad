"""What an idle WebSocket connection keeps alive on the server: no Task, no coroutine and no
aiohttp request handler (server/websocket.py's protocol serves it; each suspended frame or Task
is memory every idle connection holds; bench/conn_memory.py has the figures), the environ kept
for it has no per-connection key strings, and the session still ends cleanly when the client
goes. The server runs in this process so its tasks can be read."""

from __future__ import annotations

import asyncio
import gc
import inspect
import socket
from pathlib import Path
from typing import Any

import aiohttp
import httptools
from aiohttp import web

from namespaces import factories
from server.app import create_app
from server.config import load_config
from server.session_environ import SessionEnviron
from server.websocket import WebSocketConnection

ROOT = Path(__file__).resolve().parent.parent


def chain_of(task: asyncio.Task) -> list[Any]:
    """The code objects of the coroutines a task is suspended in, outermost first."""
    codes = []
    awaited: Any = task.get_coro()
    while inspect.iscoroutine(awaited):
        codes.append(awaited.cr_code)
        awaited = awaited.cr_await
    return codes


async def start_server() -> tuple[web.AppRunner, web.Application, int]:
    config = load_config(str(ROOT / "bench" / "bench.toml"), environ={"BENCH_NAMESPACE": "1"})
    app = create_app(config, factories(bench=True))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    return runner, app, sock.getsockname()[1]


async def connect(session: aiohttp.ClientSession, port: int) -> aiohttp.ClientWebSocketResponse:
    ws = await session.ws_connect(f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket")
    assert (await ws.receive_str()).startswith("0")  # Engine.IO OPEN
    await ws.send_str("40/bench,")
    assert (await ws.receive_str()).startswith("40/bench,")  # the namespace CONNECT ack
    return ws


async def test_an_idle_websocket_has_no_task_and_no_aiohttp_request_handler():
    """A new session's WebSocket is served by server/websocket.py's protocol: no Task, no
    coroutine, no aiohttp RequestHandler left for the idle connection."""
    runner, app, port = await start_server()
    try:
        async with aiohttp.ClientSession() as session:
            # (python-engineio's service task starts with the first session, once per server.)
            first = await connect(session, port)
            await asyncio.sleep(0.1)
            before = set(asyncio.all_tasks())
            ws = await connect(session, port)
            await asyncio.sleep(0.1)
            assert not [chain_of(t) for t in asyncio.all_tasks() - before]
            await first.close()
            for _ in range(100):
                if len(app["runtime"].sio.eio.sockets) == 1:
                    break
                await asyncio.sleep(0.05)
            assert runner.server.connections == []  # aiohttp forgot both connections: they are ours

            sio = app["runtime"].sio
            eio = sio.eio
            # The environ kept for the session (namespace handlers get it) has every item, kept
            # as its request (SessionEnviron), not as a dict; the driver keeps no second reference.
            [(eio_sid, environ)] = sio.environ.items()
            assert environ["HTTP_UPGRADE"] == "websocket" and environ["aiohttp.request"].remote == "127.0.0.1"
            assert isinstance(environ, SessionEnviron) and not hasattr(environ, "__dict__")
            assert type(eio.sockets[eio_sid]._ws) is WebSocketConnection
            assert len(eio.sockets) == 1 and eio.requests_in_flight == 1 and len(eio._websockets) == 1
            await ws.close()
            for _ in range(100):  # the session ends and is forgotten with its transport
                if not eio.sockets and not eio._websockets and not eio.requests_in_flight:
                    break
                await asyncio.sleep(0.05)
            assert not eio.sockets and not eio._websockets and eio.requests_in_flight == 0
    finally:
        await runner.cleanup()


async def test_the_read_watchdog_rearms_after_a_read_and_cuts_a_silent_websocket():
    """The read watchdog is a deadline on the server's read schedule (server/deadlines.py), a
    heartbeat cycle from the last read: a read moves it, and when it falls due the silent
    connection is cut off."""
    runner, app, port = await start_server()
    try:
        async with aiohttp.ClientSession() as session:
            ws = await connect(session, port)
            eio = app["runtime"].sio.eio
            [socket] = eio.sockets.values()
            loop = asyncio.get_running_loop()
            deadline = eio.ping_interval + eio.ping_timeout
            watchdogs = eio.read_deadlines
            first = watchdogs.when(socket)
            assert first is not None and first > loop.time() + deadline - 5
            await asyncio.sleep(0.2)
            await ws.send_str("6")  # a NOOP: read, so the deadline moves
            for _ in range(50):
                if watchdogs.when(socket) > first + 0.1:
                    break
                await asyncio.sleep(0.02)
            assert watchdogs.when(socket) > first + 0.1 and not ws.closed and eio.sockets
            watchdogs._due[socket] = loop.time() - 1  # silent for a whole heartbeat cycle
            watchdogs._run()
            msg = await asyncio.wait_for(ws.receive(), 5)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
            for _ in range(100):
                if not eio.sockets:
                    break
                await asyncio.sleep(0.05)
            assert not eio.sockets and socket not in watchdogs
    finally:
        await runner.cleanup()


async def test_sessions_opened_on_the_lean_front_keep_an_environ_that_reads_like_engineio_s():
    """A session opened by server/http_front.py (a polling handshake, a WebSocket) keeps its
    request, and its environ rebuilt from it reads as python-engineio's: the connect handlers
    and the Admin UI's socket details read headers, query and address from it. The WebSocket's
    request never reached aiohttp (no request of the application's path counted)."""
    runner, app, port = await start_server()
    try:
        sio = app["runtime"].sio
        registry = app["runtime"].metrics.registry
        async with aiohttp.ClientSession(headers={"User-Agent": "lean-test/1"}) as session:
            async with session.get(f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=polling&x=1") as resp:
                assert resp.status == 200 and (await resp.text()).startswith("0")
            ws = await connect(session, port)
            environs = list(sio.environ.values())
            assert len(environs) == 2 and all(isinstance(e, SessionEnviron) for e in environs)
            polling, websocket = sorted(environs, key=lambda e: e["QUERY_STRING"])
            assert polling["QUERY_STRING"] == "EIO=4&transport=polling&x=1"
            assert websocket["QUERY_STRING"] == "EIO=4&transport=websocket"
            for environ in (polling, websocket):
                assert environ["HTTP_USER_AGENT"] == "lean-test/1" and environ["REQUEST_METHOD"] == "GET"
                assert environ["PATH_INFO"] == "/socket.io/" and environ["aiohttp.request"].remote == "127.0.0.1"
                assert dict(environ)["RAW_URI"] == "/socket.io/?" + environ["QUERY_STRING"]
            assert websocket["HTTP_UPGRADE"] == "websocket"
            assert registry.get_sample_value("rt_http_requests_total", {"path": "app"}) == 0
            assert registry.get_sample_value("rt_http_requests_total", {"path": "lean"}) == 2
            await ws.close()
    finally:
        await runner.cleanup()


def _instances(*types: type) -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, types))


async def test_a_connect_leaves_no_cyclic_garbage_and_closed_connections_are_freed_with_start_up_frozen():
    """Connecting leaves nothing for the collector to find (the lean front that read the
    handshake is freed by its reference count once the WebSocket has the connection), the
    heartbeat PINGs and the read watchdog need no loop timer per connection (their schedules' timers
    copy no Context), and with start-up's objects frozen as
    ``python -m server`` freezes them (server/__main__.py tune_gc), closed connections' objects
    are still freed: the server's objects per connection go back to none."""
    from server.engine_socket import TIMER_CONTEXT, RealtimeSocket
    from server.http_front import HttpFront

    runner, app, port = await start_server()
    eio = app["runtime"].sio.eio
    gc.collect()
    gc.freeze()
    try:
        async with aiohttp.ClientSession() as session:
            warm = await connect(session, port)  # lazily built parts, in the baseline
            await warm.send_str("1")
            await warm.close()
            for _ in range(100):
                if not eio.sockets:
                    break
                await asyncio.sleep(0.05)
            gc.collect()
            gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds is kept to be looked at
            try:
                clients = [await connect(session, port) for _ in range(20)]
                await asyncio.sleep(0.1)
                gc.collect()
                found = [o for o in gc.garbage if isinstance(o, (HttpFront, httptools.HttpRequestParser))]
                gc.garbage.clear()
            finally:
                gc.set_debug(0)
            assert not found
            assert len(eio.sockets) == 20 and _instances(HttpFront) == 0
            # The PINGs and the read watchdogs are on schedules (server/deadlines.py), not a
            # loop timer each; the schedules' timers copy no context: one for all.
            assert all(s in eio.ping_deadlines and s in eio.read_deadlines for s in eio.sockets.values())
            # (the client in this process keeps timers of its own: only the server's count)
            assert not [h for h in gc.get_objects() if isinstance(h, asyncio.TimerHandle) and not h.cancelled()
                        and isinstance(getattr(h._callback, "__self__", None), (RealtimeSocket, WebSocketConnection))]
            assert eio.read_deadlines._timer._context is TIMER_CONTEXT
            for ws in clients:
                # (an Engine.IO CLOSE first, as socket.io-client's disconnect(): a session whose
                # transport just broke is kept ping_timeout longer, for a long-poll to read it)
                await ws.send_str("1")
                await ws.close()
            for _ in range(100):
                if not eio.sockets:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.1)
            gc.collect()
            # (python-engineio's service task holds the last session it looked at in a local
            # variable until its next sweep: one at most)
            assert _instances(RealtimeSocket, WebSocketConnection) <= 1
            assert len(eio.ping_deadlines) == 0 and len(eio.read_deadlines) == 0
    finally:
        gc.unfreeze()
        await runner.cleanup()
