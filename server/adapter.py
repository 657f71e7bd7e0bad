"""Where this server meets python-socketio and python-engineio: every override of theirs is here.

For each library class the server extends there is one adapter class below, and it holds every
method that overrides a method of the library's. Each override names, in the comment above it,
the library version it was written against (:data:`server.library_pins.PINNED`; the signatures
are in :data:`server.library_pins.OVERRIDDEN`, checked by ``tests/test_library_overrides.py``,
which also fails when a class outside this module overrides a library method).

An override is either

- library glue of a few lines, kept whole here (``create_queue``, ``_ok``, ``_send_packet``, the
  aiohttp WebSocket driver), or
- a one-line hand-over to a method with our own name (``_handle_connect`` →
  ``connect_namespace``), which the subclass implements: ``RealtimeEngine`` and ``RealtimeServer``
  (server/realtime.py), ``RealtimeSocket`` (server/engine_socket.py), ``RealtimeManager``
  (server/manager.py), ``BaseNamespace`` (server/namespace.py).

Where our code needs the library's own behaviour it calls ``library_<name>`` (the library's
method, as ``super()`` would reach it), never ``super().<name>`` from outside this module.

Upgrading a library: see server/library_pins.py.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from typing import Any

import engineio
import socketio
from aiohttp import web
from bidict import ValueDuplicationError
from engineio import packet as eio_packet
from engineio import payload as eio_payload
from engineio.async_drivers import aiohttp as eio_aiohttp
from engineio.async_socket import AsyncSocket
from socketio import AsyncManager
from socketio import packet as sio_packet

from . import codec, randomness
from .send_queue import SendQueue

NOOP_FRAME = eio_packet.Packet(eio_packet.NOOP).encode()


class CountedPayload(eio_payload.Payload):
    """A long-polling POST body. python-engineio refuses more than 16 packets in one (and the
    session dies with "Undecodable payload"), but the JS client sends everything it buffered
    while the previous POST was in flight in one body; RealtimeEngine counts them against
    ``max_packets_per_payload`` before decoding."""

    # python-engineio 4.15.1: Payload.max_decode_packets (a class attribute)
    max_decode_packets = sys.maxsize


class TextPacket(sio_packet.Packet):
    """python-socketio's packet for the default (JSON text) serializer, with its constructor,
    decode and encode from server/codec.py: compiled (server/_codec.pyx) after ``make install``,
    else the library's own code. ServerAdapter makes it the server's ``packet_class``."""

    # python-socketio 5.18.1: Packet.__init__
    __init__ = codec.init_packet
    # python-socketio 5.18.1: Packet.decode
    decode = codec.decode_packet
    # python-socketio 5.18.1: Packet.encode
    encode = codec.encode_packet
    # The server assigns its json module to its packet class at start; defined here as well, it
    # is TextPacket's own attribute from the first, not only once a server has started.
    # python-socketio 5.18.1: Packet.json
    json = sio_packet.Packet.json


class _FullBody:
    """A request body already read completely, readable the way python-engineio reads it."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    async def read(self, n: int = -1) -> bytes:
        return self.body if n < 0 else self.body[:n]


class AiohttpWebSocket(eio_aiohttp.WebSocket):
    """python-engineio's aiohttp WebSocket driver, honouring ``websocket_compression`` and
    without stray NOOP frames."""

    # python-engineio 4.15.1: WebSocket.__call__ (the library's, plus compress and websocket_opened)
    async def __call__(self, environ: dict) -> Any:
        # python-engineio's aiohttp driver ignores websocket_compression, so every
        # connection negotiated permessage-deflate (~100 KiB of zlib state each).
        request = environ["aiohttp.request"]
        self._sock = web.WebSocketResponse(max_msg_size=self.server.max_http_buffer_size,
                                           compress=bool(self.server.websocket_compression))
        await self._sock.prepare(request)
        # (The library keeps `environ` on the driver too, which nothing reads: the session's
        # WebSocket would keep the request's environ alive for the connection's life.)
        # A session may run its WebSocket from the request's top frame instead of down here,
        # below python-engineio's call chain (see RealtimeSocket.websocket_opened).
        owner = getattr(self.handler, "__self__", None)
        if isinstance(owner, SocketAdapter) and owner.websocket_opened(self, request):
            return self._sock
        await self.handler(self)
        return self._sock

    # python-engineio 4.15.1: WebSocket.send
    async def send(self, message: Any) -> None:
        # A NOOP only ends a pending long-poll; on a WebSocket it is a stray frame
        # (python-engineio queues one at every upgrade).
        if message == NOOP_FRAME:
            return
        await super().send(message)


class EngineAdapter(engineio.AsyncServer):
    """python-engineio's server as RealtimeEngine (server/realtime.py) extends it."""

    node_tag = ""  # the prefix of every session id this node creates (set by the app)
    websocket_compression = False  # permessage-deflate on WebSockets (read by AiohttpWebSocket)
    socket_class: type = AsyncSocket  # what each new session becomes (RealtimeSocket)

    # python-engineio 4.15.1: AsyncServer.__init__
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        translate = self._async["translate_request"]

        def translate_request(request: web.Request) -> dict:
            # A POST body RealtimeEngine has read and decoded already (rt_body, rt_packets).
            environ = translate(request)
            body = request.get("rt_body")
            if body is not None:
                environ["wsgi.input"] = _FullBody(body)
                environ["CONTENT_LENGTH"] = str(len(body))
                environ["rt.packets"] = request["rt_packets"]
            return environ

        self._async = {**self._async, "translate_request": translate_request, "websocket": AiohttpWebSocket}
        # Every request comes through handle_request: bound to serve itself, each one (and each
        # open WebSocket, suspended in serve) skips the hand-over's coroutine frame (the
        # override below stays for any other caller).
        self.handle_request = self.serve  # type: ignore[method-assign]

    # python-engineio 4.15.1: AsyncServer.create_queue
    def create_queue(self, *args: Any, **kwargs: Any) -> SendQueue:
        """Each session's outgoing queue (python-engineio creates an asyncio.Queue)."""
        return SendQueue()

    # python-engineio 4.15.1: AsyncServer.generate_id
    def generate_id(self) -> str:
        """Session ids start with this node's tag, so any node can tell who owns a session.
        The rest is python-engineio's id: 12 random bytes and a 3-byte sequence number, in
        base64 with ``-`` and ``_``; the random bytes from server/randomness.py (no getrandom
        call per id)."""
        number = self.sequence_number
        self.sequence_number = (number + 1) & 0xFFFFFF
        raw = randomness.token_bytes(12) + number.to_bytes(3, "big")
        return self.node_tag + randomness.urlsafe(raw)

    # python-engineio 4.15.1: AsyncServer._cors_allowed_origins
    def _cors_allowed_origins(self, environ: dict) -> list[str] | None:
        return self.origins_for(environ, super()._cors_allowed_origins(environ))

    # python-engineio 4.15.1: AsyncServer._ok
    def _ok(self, packets: Any = None, headers: Any = None, jsonp_index: Any = None) -> dict:
        response = super()._ok(packets, headers, jsonp_index)
        if packets is None:
            response["response"] = b"ok"  # a POST answers "ok", as the spec says
        return response

    # python-engineio 4.15.1: AsyncServer.handle_request
    async def handle_request(self, request: web.Request) -> web.StreamResponse:
        return await self.serve(request)

    # python-engineio 4.15.1: AsyncServer._trigger_event
    async def _trigger_event(self, event: str, *args: Any, **kwargs: Any) -> Any:
        if event == "connect" and len(args) >= 2:
            # python-engineio has just created the session (AsyncSocket is hard-wired in its
            # _handle_connect); this is the one moment to make it a socket_class, before
            # its heartbeat is scheduled and its transport starts.
            created = self.sockets.get(args[0])
            if created is not None and created.__class__ is AsyncSocket:
                created.__class__ = self.socket_class
        return await self.engine_event(event, *args, **kwargs)

    # python-engineio 4.15.1: AsyncServer.disconnect
    async def disconnect(self, sid: str | None = None) -> None:
        await self.end_sessions(sid)

    # ------------------------------------------------------------------ the library's own, for our code

    async def library_handle_request(self, request: web.Request) -> web.StreamResponse:
        return await super().handle_request(request)

    async def library_trigger_event(self, event: str, *args: Any, **kwargs: Any) -> Any:
        return await super()._trigger_event(event, *args, **kwargs)

    # python-engineio 4.15.1: AsyncServer._trigger_event (MIRRORED in server/library_pins.py)
    async def library_connect_event(self, sid: str, environ: dict) -> Any:
        """What ``library_trigger_event("connect", sid, environ, run_async=False)`` returns,
        step by step as python-engineio runs it (the handler's result; None without a handler
        or when it was cancelled; False when it raised, logged), without its coroutine and
        closure around the handler's: a connect costs a dozen calls less. (One difference: a
        plain function that returns an awaitable has it awaited, where the library would
        return the awaitable itself, which refuses the session.)"""
        handler = self.handlers.get("connect")
        if handler is None:
            return None
        # (The library's bare ``except:`` refuses the session whatever the handler raised.)
        try:
            ret = handler(sid, environ)
        except BaseException:  # a plain function's error (a coroutine function's comes below)
            self.logger.exception("connect handler error")
            return False
        if not inspect.isawaitable(ret):
            return ret
        try:
            return await ret
        except asyncio.CancelledError:
            return None
        except BaseException:
            self.logger.exception("connect async handler error")
            return False

    # ------------------------------------------------------------------ what the subclass implements

    def origins_for(self, environ: dict, allowed: list[str] | None) -> list[str] | None:
        """The origins allowed for this request, given the configured ones (None: any)."""
        return allowed

    async def serve(self, request: web.Request) -> web.StreamResponse:
        """Answer one request to the Engine.IO endpoint."""
        raise NotImplementedError

    async def engine_event(self, event: str, *args: Any, **kwargs: Any) -> Any:
        """A session's ``connect``, ``message`` or ``disconnect``, for the handlers."""
        return await self.library_trigger_event(event, *args, **kwargs)

    async def end_sessions(self, sid: str | None) -> None:
        """End one session (or all, for None)."""
        raise NotImplementedError


class SocketAdapter(AsyncSocket):
    """python-engineio's session as RealtimeSocket (server/engine_socket.py) extends it."""

    # python-engineio 4.15.1: AsyncSocket.receive
    async def receive(self, pkt: eio_packet.Packet) -> None:
        await self.on_packet(pkt)

    # python-engineio 4.15.1: AsyncSocket.handle_post_request
    async def handle_post_request(self, environ: dict) -> None:
        return await self.on_post(environ)

    # python-engineio 4.15.1: AsyncSocket.send
    async def send(self, pkt: eio_packet.Packet) -> None:
        await self.send_packet(pkt)

    # python-engineio 4.15.1: AsyncSocket.schedule_ping
    def schedule_ping(self) -> None:
        self.arm_ping()

    # python-engineio 4.15.1: AsyncSocket.close
    async def close(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        await self.close_session(wait=wait, abort=abort, reason=reason)

    # python-engineio 4.15.1: AsyncSocket._websocket_handler
    async def _websocket_handler(self, ws: Any) -> None:
        await self.serve_websocket(ws)

    # ------------------------------------------------------------------ the library's own, for our code

    async def library_handle_post_request(self, environ: dict) -> None:
        return await super().handle_post_request(environ)

    async def library_close(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        await super().close(wait=wait, abort=abort, reason=reason)

    # ------------------------------------------------------------------ what the subclass implements

    async def on_packet(self, pkt: eio_packet.Packet) -> None:
        """Handle one Engine.IO packet from the client, over either transport."""
        raise NotImplementedError

    async def on_post(self, environ: dict) -> None:
        """Handle a long-polling POST."""
        raise NotImplementedError

    async def send_packet(self, pkt: eio_packet.Packet) -> None:
        """Send one packet to the client."""
        raise NotImplementedError

    def write_text(self, text: str) -> bool:
        """Send the encoded Socket.IO packet ``text`` (a MESSAGE) now, when nothing stands in
        the way; False: it must go through :meth:`send_packet`."""
        return False

    def arm_ping(self) -> None:
        """Schedule the next heartbeat PING."""
        raise NotImplementedError

    async def close_session(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        """End the session."""
        await self.library_close(wait=wait, abort=abort, reason=reason)

    async def serve_websocket(self, ws: Any) -> None:
        """Run the session's WebSocket (an upgrade, or a session that started on one)."""
        raise NotImplementedError

    def websocket_opened(self, ws: Any, request: web.Request) -> bool:
        """The driver has just opened this session's WebSocket ``ws`` for ``request``: True
        when the session will run it later itself (the driver then returns at once), False
        to have it run now through ``_websocket_handler``."""
        return False


class ServerAdapter(socketio.AsyncServer):
    """python-socketio's server as RealtimeServer (server/realtime.py) extends it."""

    engine_class: type = EngineAdapter  # the Engine.IO server it runs on (RealtimeEngine)

    # python-socketio 5.18.1: AsyncServer.__init__
    def __init__(self, manager: AsyncManager, **options: Any) -> None:
        """:param options: python-socketio's and python-engineio's keyword arguments."""
        # Each inbound packet already runs in its own eagerly started coroutine
        # (RealtimeSocket), so the event handler runs inline instead of in one more Task.
        # python-socketio registers self._handle_eio_message as Engine.IO's "message" handler
        # here; bound to eio_message itself, every inbound packet skips the hand-over's frame
        # (the override below stays for any other caller).
        self._handle_eio_message = self.eio_message
        if options.get("serializer", "default") == "default":
            # python-socketio then sets json= on TextPacket, not on its own Packet class.
            options["serializer"] = TextPacket
        super().__init__(client_manager=manager, async_handlers=False, **options)

    # python-socketio 5.18.1: AsyncServer.emit (plus `volatile`)
    async def emit(self, event: str, data: Any = None, to: Any = None, room: Any = None, skip_sid: Any = None,
                   namespace: str | None = None, callback: Any = None, ignore_queue: bool = False,
                   volatile: bool = False) -> None:
        """As AsyncServer.emit; ``volatile=True`` sends without logging, may be dropped for slow clients."""
        await self.manager.emit(event, data, namespace or "/", room=to or room, skip_sid=skip_sid,
                                callback=callback, volatile=volatile, local_only=ignore_queue)

    # python-socketio 5.18.1: AsyncServer._engineio_server_class
    def _engineio_server_class(self) -> type:
        return self.engine_class

    # python-socketio 5.18.1: AsyncServer.disconnect (plus our keyword arguments, e.g. `ending`)
    async def disconnect(self, sid: str, namespace: str | None = None, ignore_queue: bool = False,
                         **ours: Any) -> None:
        await self.disconnect_socket(sid, namespace, **ours)

    # python-socketio 5.18.1: AsyncServer._handle_eio_connect
    async def _handle_eio_connect(self, eio_sid: str, environ: dict) -> None:
        await self.eio_connected(eio_sid, environ)

    # python-socketio 5.18.1: AsyncServer._handle_eio_message
    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        await self.eio_message(eio_sid, data)

    # python-socketio 5.18.1: AsyncServer._send_packet
    async def _send_packet(self, eio_sid: str, pkt: Any) -> None:
        """As python-socketio's, handing a text packet straight to the session (python-engineio's
        send → send_packet → _get_socket → socket.send, less the lookups)."""
        encoded = pkt.encode()
        if isinstance(encoded, str):
            socket = self.eio.sockets.get(eio_sid)
            if socket is not None and not socket.closed:
                if isinstance(socket, SocketAdapter):
                    # Written now if its WebSocket can take it, else its send_packet, without
                    # send's frame.
                    if not socket.write_text(encoded):
                        await socket.send_packet(codec.message_packet(encoded))
                else:
                    await socket.send(codec.message_packet(encoded))
            return
        await super()._send_packet(eio_sid, pkt)

    # python-socketio 5.18.1: AsyncServer._handle_connect
    async def _handle_connect(self, eio_sid: str, namespace: str, data: Any) -> None:
        await self.connect_namespace(eio_sid, namespace, data)

    # python-socketio 5.18.1: AsyncServer._handle_disconnect
    async def _handle_disconnect(self, eio_sid: str, namespace: str, reason: str | None = None) -> None:
        await self.disconnect_namespace(eio_sid, namespace, reason)

    # python-socketio 5.18.1: AsyncServer._handle_eio_disconnect
    async def _handle_eio_disconnect(self, eio_sid: str, reason: str) -> None:
        await self.eio_disconnected(eio_sid, reason)

    # ------------------------------------------------------------------ the library's own, for our code

    # python-socketio 5.18.1: AsyncServer._handle_eio_connect (MIRRORED in server/library_pins.py)
    def library_handle_eio_connect(self, eio_sid: str, environ: dict) -> None:
        """python-socketio's ``_handle_eio_connect``, step by step: it awaits nothing, so it
        is called here without its coroutine (one per connect)."""
        if not self.manager_initialized:
            self.manager_initialized = True
            self.manager.initialize()
        self.environ[eio_sid] = environ

    async def library_handle_eio_message(self, eio_sid: str, data: Any) -> None:
        await super()._handle_eio_message(eio_sid, data)

    async def library_handle_disconnect(self, eio_sid: str, namespace: str, reason: str | None = None) -> None:
        await super()._handle_disconnect(eio_sid, namespace, reason)

    async def library_handle_eio_disconnect(self, eio_sid: str, reason: str) -> None:
        await super()._handle_eio_disconnect(eio_sid, reason)

    # ------------------------------------------------------------------ what the subclass implements

    async def disconnect_socket(self, sid: str, namespace: str | None = None, **ours: Any) -> None:
        """Server-side disconnect of one socket."""
        raise NotImplementedError

    async def eio_connected(self, eio_sid: str, environ: dict) -> None:
        """A new Engine.IO session."""
        self.library_handle_eio_connect(eio_sid, environ)

    async def eio_message(self, eio_sid: str, data: Any) -> None:
        """One Socket.IO packet (or binary attachment) from a client."""
        await self.library_handle_eio_message(eio_sid, data)

    async def connect_namespace(self, eio_sid: str, namespace: str, data: Any) -> None:
        """A client's CONNECT to ``namespace`` with payload ``data``."""
        raise NotImplementedError

    async def disconnect_namespace(self, eio_sid: str, namespace: str, reason: str | None = None) -> None:
        """A socket leaves ``namespace``, whoever ended it."""
        await self.library_handle_disconnect(eio_sid, namespace, reason)

    async def eio_disconnected(self, eio_sid: str, reason: str) -> None:
        """An Engine.IO session ended."""
        await self.library_handle_eio_disconnect(eio_sid, reason)


class Room(dict):
    """A room's members, ``sid -> eio_sid``, for every room but a namespace's ``None`` room.

    python-socketio makes each room a ``bidict``, for the inverse lookup (``eio_sid -> sid``)
    and the duplicate check of a second connect of one Engine.IO session, both of which it only
    asks of the ``None`` room (``sid_from_eio_sid``, ``pre_connect``). Every socket has a room
    of its own and most a user room: as bidicts, two dicts and a bidict object each, written
    through bidict's Python-level checks at every connect. A plain dict does; ``_fwdm`` is what
    the library's ``get_participants`` reads of a room (a bidict's forward dict)."""

    __slots__ = ()

    @property
    def _fwdm(self) -> "Room":
        return self


class NamespaceRoom(dict):
    """A namespace's ``None`` room: its sockets, ``sid -> eio_sid``, with the inverse
    python-socketio reads (``_invm``: ``sid_from_eio_sid``) kept beside it.

    python-socketio makes it a ``bidict``, whose every write and delete runs about ten
    Python-level calls (a connect writes it once, a disconnect deletes once). As a bidict it
    refuses a value that is already another key's (``ValueDuplicationError``: an Engine.IO
    session connects to a namespace once, python-socketio's ``pre_connect`` relies on it), and
    a key written again drops its old value's inverse; deleted, both directions go."""

    __slots__ = ("_invm",)

    def __init__(self) -> None:
        super().__init__()
        self._invm: dict[str, str] = {}

    @property
    def _fwdm(self) -> "NamespaceRoom":
        return self

    def __setitem__(self, sid: str, eio_sid: str) -> None:
        invm = self._invm
        owner = invm.get(eio_sid)
        if owner is not None and owner != sid:
            raise ValueDuplicationError(eio_sid)
        old = dict.get(self, sid)
        if old is not None and old != eio_sid:
            del invm[old]
        dict.__setitem__(self, sid, eio_sid)
        invm[eio_sid] = sid

    def __delitem__(self, sid: str) -> None:
        del self._invm[dict.pop(self, sid)]

    def pop(self, sid: str, *default: Any) -> Any:
        if sid not in self:
            if default:
                return default[0]
            raise KeyError(sid)
        eio_sid = dict.pop(self, sid)
        del self._invm[eio_sid]
        return eio_sid

    def __copy__(self) -> "NamespaceRoom":
        copied = NamespaceRoom()
        dict.update(copied, self)
        copied._invm = dict(self._invm)
        return copied

    def _unsupported(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("a namespace room changes one socket at a time ([sid] = eio_sid, del, pop)")

    update = setdefault = popitem = clear = __ior__ = _unsupported  # would bypass the inverse


class ManagerAdapter(AsyncManager):
    """python-socketio's client manager as RealtimeManager (server/manager.py) extends it."""

    # python-socketio 5.18.1: AsyncManager.emit
    async def emit(self, event: str, data: Any, namespace: str, room: Any = None, skip_sid: Any = None,
                   callback: Any = None, to: Any = None, **kwargs: Any) -> None:
        await self.route_emit(event, data, namespace, room=room, skip_sid=skip_sid, callback=callback, to=to,
                              **kwargs)

    # python-socketio 5.18.1: AsyncManager.pre_connect
    async def pre_connect(self, eio_sid: str, namespace: str) -> str | None:
        return await self.admit(eio_sid, namespace)

    # python-socketio 5.18.1: AsyncManager.basic_enter_room
    def basic_enter_room(self, sid: str, namespace: str, room: Any, eio_sid: str | None = None) -> None:
        self.add_to_room(sid, namespace, room, eio_sid=eio_sid)

    # python-socketio 5.18.1: AsyncManager.basic_leave_room
    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> None:
        self.remove_from_room(sid, namespace, room)

    # python-socketio 5.18.1: AsyncManager.get_rooms
    def get_rooms(self, sid: str, namespace: str) -> list[str]:
        return self.socket_rooms(sid, namespace)

    # python-socketio 5.18.1: AsyncManager.basic_disconnect
    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        self.drop_socket(sid, namespace, **kwargs)

    # python-socketio 5.18.1: AsyncManager.enter_room
    async def enter_room(self, sid: str, namespace: str, room: str, eio_sid: str | None = None) -> None:
        await self.enter(sid, namespace, room, eio_sid=eio_sid)

    # python-socketio 5.18.1: AsyncManager.leave_room
    async def leave_room(self, sid: str, namespace: str, room: str) -> None:
        await self.leave(sid, namespace, room)

    # python-socketio 5.18.1: AsyncManager.disconnect
    async def disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        return await self.disconnect_socket(sid, namespace, **kwargs)

    # ------------------------------------------------------------------ the library's own, for our code

    async def library_emit(self, event: str, data: Any, namespace: str, room: Any = None, skip_sid: Any = None,
                           callback: Any = None, to: Any = None, **kwargs: Any) -> None:
        await super().emit(event, data, namespace, room=room, skip_sid=skip_sid, callback=callback, to=to,
                           **kwargs)

    async def library_pre_connect(self, eio_sid: str, namespace: str) -> str | None:
        return await super().pre_connect(eio_sid, namespace)

    def library_basic_enter_room(self, sid: str, namespace: str, room: Any, eio_sid: str | None = None) -> None:
        """python-socketio 5.18.1's BaseManager.basic_enter_room, with a :class:`Room` for every
        room but the namespace's ``None`` room (a :class:`NamespaceRoom` where the library has
        a bidict)."""
        rooms = self.rooms.get(namespace)
        if eio_sid is None and rooms is None:
            raise ValueError("sid is not connected to requested namespace")
        if sid != room and rooms is not None and room in rooms.get(None, ()):
            raise ValueError("cannot enter a sid room")
        if rooms is None:
            rooms = self.rooms[namespace] = {}
        members = rooms.get(room)
        if members is None:
            members = rooms[room] = NamespaceRoom() if room is None else Room()
        if eio_sid is None:
            eio_sid = rooms[None][sid]
        members[sid] = eio_sid

    def library_basic_leave_room(self, sid: str, namespace: str, room: Any) -> None:
        super().basic_leave_room(sid, namespace, room)

    async def library_leave_room(self, sid: str, namespace: str, room: str) -> None:
        await super().leave_room(sid, namespace, room)

    async def library_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        return await super().disconnect(sid, namespace, **kwargs)

    # ------------------------------------------------------------------ what the subclass implements

    async def route_emit(self, event: str, data: Any, namespace: str, room: Any = None, skip_sid: Any = None,
                         callback: Any = None, to: Any = None, **kwargs: Any) -> None:
        """Send an event to a socket, a room or a namespace."""
        await self.library_emit(event, data, namespace, room=room, skip_sid=skip_sid, callback=callback, to=to,
                                **kwargs)

    async def admit(self, eio_sid: str, namespace: str, sid: str | None = None) -> str | None:
        """Register an Engine.IO session's socket in ``namespace`` (pre-connected); its sid, or None."""
        return await self.library_pre_connect(eio_sid, namespace)

    def add_to_room(self, sid: str, namespace: str, room: Any, eio_sid: str | None = None) -> None:
        """Put a socket in a room (no I/O)."""
        self.library_basic_enter_room(sid, namespace, room, eio_sid=eio_sid)

    def remove_from_room(self, sid: str, namespace: str, room: Any) -> None:
        """Take a socket out of a room (no I/O)."""
        self.library_basic_leave_room(sid, namespace, room)

    def socket_rooms(self, sid: str, namespace: str) -> list[str]:
        """The rooms a socket is in."""
        raise NotImplementedError

    def drop_socket(self, sid: str, namespace: str, **kwargs: Any) -> None:
        """Forget a socket: its rooms, callbacks and pending state (no I/O)."""
        raise NotImplementedError

    async def enter(self, sid: str, namespace: str, room: str, eio_sid: str | None = None,
                    fresh: bool = False) -> None:
        """A socket joins a room (a namespace's handler, an operator, the server API).
        ``fresh``: the room cannot have had a publication yet (see RealtimeManager.join)."""
        self.add_to_room(sid, namespace, room, eio_sid=eio_sid)

    async def leave(self, sid: str, namespace: str, room: str) -> None:
        """A socket leaves a room."""
        await self.library_leave_room(sid, namespace, room)

    async def disconnect_socket(self, sid: str, namespace: str, **kwargs: Any) -> None:
        """Forget a disconnected socket."""
        return await self.library_disconnect(sid, namespace, **kwargs)


class NamespaceAdapter(socketio.AsyncNamespace):
    """python-socketio's class-based namespace as BaseNamespace (server/namespace.py) extends it."""

    # python-socketio 5.18.1: AsyncNamespace.__init__
    def __init__(self, namespace: str | None = None) -> None:
        super().__init__(namespace)
        # Every event is dispatched through trigger_event: bound to handle_event itself, it
        # skips the hand-over's frame (the override below stays for the class's readers).
        self.trigger_event = self.handle_event  # type: ignore[method-assign]

    # python-socketio 5.18.1: AsyncNamespace.trigger_event
    async def trigger_event(self, event: str, *args: Any) -> Any:
        return await self.handle_event(event, *args)

    async def library_trigger_event(self, event: str, *args: Any) -> Any:
        return await super().trigger_event(event, *args)

    async def handle_event(self, event: str, *args: Any) -> Any:
        """Run the handler of ``event`` (``args``: the sid, then the event's arguments); its
        result is the ack. By default as python-socketio's: the ``on_<event>`` method."""
        return await self.library_trigger_event(event, *args)
