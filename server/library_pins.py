"""What this server relies on inside python-socketio and python-engineio (and a little of aiohttp).

The server subclasses the libraries' classes and overrides private methods, so a new release can
break it without any error until a client notices. Every override is in one module,
``server/adapter.py``, each under a comment naming the library version below; the classes of
``server/realtime.py``, ``engine_socket.py``, ``manager.py`` and ``namespace.py`` extend the
adapter's classes and implement methods with our own names. ``tests/test_library_overrides.py``
checks every line below against the installed libraries and fails by name when something was
renamed, removed or re-signed, when a subclass overrides a library method not listed here, when
a class outside ``server/adapter.py`` overrides one (``__init__`` aside: our constructors), when
an override's comment does not name the pinned version, or when the installed versions are not
the pinned ones.

Upgrading python-socketio or python-engineio: change :data:`PINNED` and the exact pins in
``pyproject.toml``, run ``make lock`` and ``make install``, run that test; for each failure read
the library's change, adapt the override in ``server/adapter.py`` and its version comment, then
update its line here. Run ``tests/test_codec.py`` too: ``server/_codec.pyx`` re-implements
``Packet.__init__``, ``decode`` and ``encode`` in C, and must still agree with the library's
(``server/_codec_pure.py`` binds those themselves).

Keys are ``"module:Class.attribute"`` (``"module:function"`` for a module's function); a
``[name]`` step looks up a dict key. A signature is what ``str(inspect.signature(...))`` prints
for the library's function; ``None`` marks a data attribute (checked on a real instance).
"""

from __future__ import annotations

# The exact versions everything below was written against (pyproject.toml pins the same).
PINNED = {
    "python-socketio": "5.18.1",
    "python-engineio": "4.15.1",
}

# Library methods overridden (all in server/adapter.py; the constructors of our subclasses aside),
# with the library's signature the override was written against.
OVERRIDDEN: dict[str, str | None] = {
    # TextPacket carries the json module python-socketio assigns per server (server/adapter.py)
    "socketio.packet:Packet.json": None,
    # EngineAdapter (server/adapter.py), extended by RealtimeEngine (server/realtime.py)
    "engineio.async_server:AsyncServer.__init__":
        "(self, async_mode=None, ping_interval=25, ping_timeout=20, max_http_buffer_size=1000000, "
        "allow_upgrades=True, http_compression=True, compression_threshold=1024, cookie=None, "
        "cors_allowed_origins=None, cors_credentials=True, logger=False, json=None, async_handlers=True, "
        "monitor_clients=None, transports=None, **kwargs)",
    "engineio.async_server:AsyncServer.create_queue": "(self, *args, **kwargs)",
    "engineio.async_server:AsyncServer.generate_id": "(self)",
    "engineio.async_server:AsyncServer._cors_allowed_origins": "(self, environ)",
    "engineio.async_server:AsyncServer._ok": "(self, packets=None, headers=None, jsonp_index=None)",
    "engineio.async_server:AsyncServer.handle_request": "(self, *args, **kwargs)",
    "engineio.async_server:AsyncServer._trigger_event": "(self, event, *args, **kwargs)",
    "engineio.async_server:AsyncServer.disconnect": "(self, sid=None)",
    # AiohttpWebSocket (server/adapter.py): the aiohttp driver's, installed by EngineAdapter.__init__
    "engineio.async_drivers.aiohttp:WebSocket.__call__": "(self, environ)",
    "engineio.async_drivers.aiohttp:WebSocket.send": "(self, message)",
    # CountedPayload (server/adapter.py): lifts the per-body packet cap
    "engineio.payload:Payload.max_decode_packets": None,
    # ServerAdapter (server/adapter.py), extended by RealtimeServer (server/realtime.py)
    "socketio.async_server:AsyncServer.__init__":
        "(self, client_manager=None, logger=False, json=None, async_handlers=True, namespaces=None, **kwargs)",
    "socketio.async_server:AsyncServer.emit":
        "(self, event, data=None, to=None, room=None, skip_sid=None, namespace=None, callback=None, "
        "ignore_queue=False)",
    "socketio.async_server:AsyncServer._engineio_server_class": "(self)",
    "socketio.async_server:AsyncServer.disconnect": "(self, sid, namespace=None, ignore_queue=False)",
    "socketio.async_server:AsyncServer._handle_eio_connect": "(self, eio_sid, environ)",
    "socketio.async_server:AsyncServer._handle_eio_message": "(self, eio_sid, data)",
    "socketio.async_server:AsyncServer._send_packet": "(self, eio_sid, pkt)",
    "socketio.async_server:AsyncServer._handle_connect": "(self, eio_sid, namespace, data)",
    "socketio.async_server:AsyncServer._handle_disconnect": "(self, eio_sid, namespace, reason=None)",
    "socketio.async_server:AsyncServer._handle_eio_disconnect": "(self, eio_sid, reason)",
    # SocketAdapter (server/adapter.py), extended by RealtimeSocket (server/engine_socket.py)
    "engineio.async_socket:AsyncSocket.receive": "(self, pkt)",
    "engineio.async_socket:AsyncSocket.handle_post_request": "(self, environ)",
    "engineio.async_socket:AsyncSocket.send": "(self, pkt)",
    "engineio.async_socket:AsyncSocket.schedule_ping": "(self)",
    "engineio.async_socket:AsyncSocket.close": "(self, wait=True, abort=False, reason=None)",
    "engineio.async_socket:AsyncSocket._websocket_handler": "(self, ws)",
    # ManagerAdapter (server/adapter.py), extended by RealtimeManager (server/manager.py, whose
    # __init__ calls this one)
    "socketio.async_manager:AsyncManager.__init__": "(self)",
    "socketio.async_manager:AsyncManager.emit":
        "(self, event, data, namespace, room=None, skip_sid=None, callback=None, to=None, **kwargs)",
    "socketio.async_manager:AsyncManager.pre_connect": "(self, eio_sid, namespace)",
    "socketio.async_manager:AsyncManager.basic_enter_room": "(self, sid, namespace, room, eio_sid=None)",
    "socketio.async_manager:AsyncManager.basic_leave_room": "(self, sid, namespace, room)",
    "socketio.async_manager:AsyncManager.get_rooms": "(self, sid, namespace)",
    "socketio.async_manager:AsyncManager.basic_disconnect": "(self, sid, namespace, **kwargs)",
    "socketio.async_manager:AsyncManager.enter_room": "(self, sid, namespace, room, eio_sid=None)",
    "socketio.async_manager:AsyncManager.leave_room": "(self, sid, namespace, room)",
    "socketio.async_manager:AsyncManager.disconnect": "(self, sid, namespace, **kwargs)",
    # NamespaceAdapter (server/adapter.py), extended by BaseNamespace (server/namespace.py, whose
    # __init__ calls this one; the namespaces extend it) and EchoNamespace (server/conformance.py)
    "socketio.async_namespace:AsyncNamespace.__init__": "(self, namespace=None)",
    "socketio.async_namespace:AsyncNamespace.trigger_event": "(self, event, *args)",
    # TextPacket (server/adapter.py): the server's packet_class, its codec from server/codec.py
    # (compiled server/_codec.pyx, or server/_codec_pure.py: the library's own methods)
    "socketio.packet:Packet.__init__":
        "(self, packet_type=2, data=None, namespace=None, id=None, binary=None, encoded_packet=None)",
    "socketio.packet:Packet.decode": "(self, encoded_packet)",
    "socketio.packet:Packet.encode": "(self)",
}

# Library methods our code calls and library attributes it reads or assigns, without overriding
# them (found with grep over server/ and namespaces/).
USED: dict[str, str | None] = {
    # socketio.AsyncServer internals (server/realtime.py, app.py, operations.py)
    "socketio.async_server:AsyncServer._handle_event": "(self, eio_sid, namespace, id, data)",
    "socketio.async_server:AsyncServer._handle_ack": "(self, eio_sid, namespace, id, data)",
    "socketio.async_server:AsyncServer._trigger_event": "(self, event, namespace, *args)",
    "socketio.async_server:AsyncServer._binary_packet": None,
    "socketio.async_server:AsyncServer.environ": None,
    "socketio.async_server:AsyncServer.namespace_handlers": None,
    "socketio.async_server:AsyncServer.handlers": None,
    "socketio.async_server:AsyncServer.packet_class": None,
    "socketio.async_server:AsyncServer.eio": None,
    "socketio.async_server:AsyncServer.manager": None,
    "socketio.async_server:AsyncServer.manager_initialized": None,
    "socketio.async_server:AsyncServer.reason.CLIENT_DISCONNECT": None,
    "socketio.async_server:AsyncServer.reason.SERVER_DISCONNECT": None,
    "socketio.async_server:AsyncServer.reason.TRANSPORT_CLOSE": None,
    "socketio.async_server:AsyncServer.reason.TRANSPORT_ERROR": None,
    "socketio.async_server:AsyncServer.reason.PING_TIMEOUT": None,
    # engineio.AsyncServer internals (RealtimeEngine replaces two entries of _async)
    "engineio.async_server:AsyncServer._async": None,
    "engineio.async_server:AsyncServer._async[translate_request]": None,
    "engineio.async_server:AsyncServer._async[websocket]": None,
    "engineio.async_server:AsyncServer.sequence_number": None,  # generate_id counts on as the library does
    "engineio.async_server:AsyncServer.sockets": None,
    "engineio.async_server:AsyncServer.handlers": None,
    "engineio.async_server:AsyncServer.ping_interval": None,
    "engineio.async_server:AsyncServer.ping_timeout": None,
    "engineio.async_server:AsyncServer.ping_interval_grace_period": None,
    "engineio.async_server:AsyncServer.max_http_buffer_size": None,
    "engineio.async_server:AsyncServer.reason.PING_TIMEOUT": None,
    "engineio.async_server:AsyncServer.reason.TRANSPORT_ERROR": None,
    "engineio.async_server:AsyncServer.reason.TRANSPORT_CLOSE": None,
    "engineio.async_drivers.aiohttp:translate_request": "(request)",
    "engineio.async_drivers.aiohttp:WebSocket.__init__": "(self, handler, server)",
    "engineio.async_drivers.aiohttp:WebSocket.wait": "(self)",
    "engineio.async_drivers.aiohttp:WebSocket.close": "(self)",
    "engineio.async_drivers.aiohttp:WebSocket._sock": None,
    "engineio.async_drivers.aiohttp:WebSocket.server": None,
    "engineio.async_drivers.aiohttp:WebSocket.handler": None,
    # an Engine.IO session's state, which RealtimeSocket reads and sets as the library does
    "engineio.async_socket:AsyncSocket.__init__": "(self, server, sid)",
    "engineio.async_socket:AsyncSocket.check_ping_timeout": "(self)",
    "engineio.async_socket:AsyncSocket.server": None,
    "engineio.async_socket:AsyncSocket.sid": None,
    "engineio.async_socket:AsyncSocket.queue": None,
    "engineio.async_socket:AsyncSocket.last_ping": None,
    "engineio.async_socket:AsyncSocket.connected": None,
    "engineio.async_socket:AsyncSocket.upgrading": None,
    "engineio.async_socket:AsyncSocket.upgraded": None,
    "engineio.async_socket:AsyncSocket.closing": None,
    "engineio.async_socket:AsyncSocket.closed": None,
    # the client manager's tables and lookups (server/manager.py, realtime.py, operations.py, admin)
    "socketio.async_manager:AsyncManager.rooms": None,
    "socketio.async_manager:AsyncManager.callbacks": None,
    "socketio.async_manager:AsyncManager.pending_connect": None,
    "socketio.async_manager:AsyncManager.pending_disconnect": None,
    "socketio.async_manager:AsyncManager.server": None,
    "socketio.async_manager:AsyncManager.sid_from_eio_sid": "(self, eio_sid, namespace)",
    "socketio.async_manager:AsyncManager.eio_sid_from_sid": "(self, sid, namespace)",
    "socketio.async_manager:AsyncManager.is_connected": "(self, sid, namespace)",
    "socketio.async_manager:AsyncManager.get_namespaces": "(self)",
    "socketio.async_manager:AsyncManager.get_participants": "(self, namespace, room)",
    "socketio.async_manager:AsyncManager.initialize": "(self)",
    "socketio.async_manager:AsyncManager.connect": "(self, sid, namespace)",
    # packets, built and taken apart by hand on the hot paths
    "socketio.packet:Packet.add_attachment": "(self, attachment)",
    "socketio.packet:Packet.data_is_binary": "(data)",
    "socketio.packet:Packet.uses_binary_events": None,
    "socketio.packet:Packet.packet_type": None,
    "socketio.packet:Packet.namespace": None,
    "socketio.packet:Packet.id": None,
    "socketio.packet:Packet.data": None,
    "socketio.packet:Packet.attachment_count": None,
    "socketio.msgpack_packet:MsgPackPacket": None,
    "engineio.packet:Packet.__init__": "(self, packet_type=6, data=None, encoded_packet=None)",
    "engineio.packet:Packet.encode": "(self, b64=False)",
    "engineio.packet:Packet.packet_type": None,
    "engineio.packet:Packet.data": None,
    "engineio.packet:Packet.encode_cache": None,  # server/_codec.pyx message_packet builds packets
    "engineio.packet:Packet.binary": None,
    "engineio.packet:OPEN": None,
    "engineio.packet:CLOSE": None,
    "engineio.packet:PING": None,
    "engineio.packet:PONG": None,
    "engineio.packet:MESSAGE": None,
    "engineio.packet:UPGRADE": None,
    "engineio.packet:NOOP": None,
    "engineio.payload:Payload.__init__": "(self, packets=None, encoded_payload=None)",
    "engineio.payload:Payload.packets": None,
    "engineio.exceptions:UnknownPacketError": None,
    "engineio.exceptions:SocketIsClosedError": None,
    "socketio.exceptions:ConnectionRefusedError.error_args": None,
    # the lean long-polling path (server/polling.py) calls what python-engineio's handle_request
    # calls for a polling handshake, GET and POST, and reads the settings it reads
    "engineio.async_server:AsyncServer._handle_connect": "(self, environ, transport, jsonp_index=None)",
    "engineio.async_server:AsyncServer._cors_headers": "(self, environ)",
    "engineio.async_server:AsyncServer._bad_request": "(self, message=None)",
    "engineio.async_server:AsyncServer._gzip": "(self, response)",
    "engineio.async_server:AsyncServer._deflate": "(self, response)",
    "engineio.async_server:AsyncServer.compression_methods": None,
    "engineio.async_server:AsyncServer.compression_threshold": None,
    "engineio.async_server:AsyncServer.http_compression": None,
    "engineio.async_server:AsyncServer.cors_allowed_origins": None,
    "engineio.async_server:AsyncServer.transports": None,
    "engineio.async_socket:AsyncSocket.handle_get_request": "(self, environ)",
    # and puts itself in front of the application in aiohttp's low-level server
    "aiohttp.web_app:Application._make_handler":
        "(self, *, loop: asyncio.events.AbstractEventLoop | None = None, "
        "access_log_class: type[aiohttp.abc.AbstractAccessLogger] = <class 'aiohttp.web_log.AccessLogger'>, "
        "**kwargs: Any) -> aiohttp.web_server.Server",
    "aiohttp.web_server:Server.request_handler": None,
    # and HttpFront (server/http_front.py) takes every connection before aiohttp's RequestHandler:
    # LeanServer extends the Server (its protocol factory and graceful shutdown), hands a
    # connection over by calling the original factory and feeding the new handler, reads the
    # keep-alive timeout run_app passes
    "aiohttp.web_server:Server.__call__": "(self) -> aiohttp.web_protocol.RequestHandler",
    "aiohttp.web_server:Server.pre_shutdown": "(self) -> None",
    "aiohttp.web_server:Server.shutdown": "(self, timeout: float | None = None) -> None",
    "aiohttp.web_server:Server._kwargs": None,
    "aiohttp.web_protocol:RequestHandler.connection_made":
        "(self, transport: asyncio.transports.BaseTransport) -> None",
    "aiohttp.web_protocol:RequestHandler.data_received": "(self, data: bytes) -> None",
    # aiohttp internals under the direct WebSocket frame writes (server/engine_socket.py)
    "aiohttp.web_ws:WebSocketResponse._writer": None,
    "aiohttp.web_ws:WebSocketResponse.compress": None,
    "aiohttp.http_websocket:WebSocketWriter.transport": None,
    # the lean WebSocket (server/websocket.py): a new session created as _handle_connect does
    # (MIRRORED below), and aiohttp's RequestHandler detached from the transport it hands over
    "engineio.async_server:AsyncServer._upgrades": "(self, sid, transport)",
    "engineio.async_server:AsyncServer._unauthorized": "(self, message=None)",
    "engineio.async_server:AsyncServer._service_task": "(self)",
    "engineio.async_server:AsyncServer.start_background_task": "(self, target, *args, **kwargs)",
    "engineio.async_server:AsyncServer.start_service_task": None,
    "engineio.async_server:AsyncServer.service_task_handle": None,
    "engineio.async_server:AsyncServer.logger": None,
    "engineio.async_socket:AsyncSocket.schedule_ping": "(self)",
    "aiohttp.web_protocol:RequestHandler.connection_lost": "(self, exc: BaseException | None) -> None",
    "aiohttp.web_protocol:RequestHandler._message_tail": None,
    "aiohttp.web_protocol:RequestHandler.transport": None,
    "aiohttp.web_request:BaseRequest.protocol": None,
    "aiohttp.web_request:BaseRequest.transport": None,
}

# Library functions our code repeats step by step, with the sha256 of their source
# (inspect.getsource) when it was written: a new release that changes one fails
# tests/test_websocket_protocol.py until our copy is checked against it.
MIRRORED: dict[str, str] = {
    # server/websocket.py create_session: a new WebSocket session, up to the transport's start
    "engineio.async_server:AsyncServer._handle_connect":
        "5bd7edc1d1ae115ae973b4a39b435d3b243a3c9b1e3218f21bbeb7ef6aa37e93",
    # server/adapter.py ServerAdapter.library_handle_eio_connect: a session's connect, for the server
    "socketio.async_server:AsyncServer._handle_eio_connect":
        "76704886d944a7e648d24c37acb921c9866a58a6c1086f2cd9917ec0386e3517",
    # server/adapter.py EngineAdapter.library_connect_event: the connect event of such a session
    "engineio.async_server:AsyncServer._trigger_event":
        "4a09b6e47eb665325458df5d59b61d13547449eedb0ef25ce0b634005dae633b",
}

# Library functions that must still call the methods we override (else the override is dead code).
CALLED_BY_LIBRARY: dict[str, tuple[str, ...]] = {
    "engineio.async_server:AsyncServer._handle_connect":
        ("generate_id", "AsyncSocket", "_trigger_event", "schedule_ping"),
    "engineio.async_server:AsyncServer.handle_request":
        ("_cors_allowed_origins", "_ok", "handle_post_request", "_handle_connect"),
    "engineio.base_socket:BaseSocket.__init__": ("create_queue",),
    "engineio.async_socket:AsyncSocket.receive": ("schedule_ping",),
    "engineio.async_socket:AsyncSocket._upgrade_websocket": ("_websocket_handler",),
    "engineio.payload:Payload.decode": ("max_decode_packets",),
    "socketio.base_server:BaseServer.__init__":
        ("_engineio_server_class", "_handle_eio_connect", "_handle_eio_message", "_handle_eio_disconnect"),
    "socketio.async_server:AsyncServer._handle_eio_message": ("_handle_connect", "_handle_disconnect"),
    "socketio.async_server:AsyncServer._handle_eio_disconnect": ("_handle_disconnect",),
    "socketio.async_server:AsyncServer._trigger_event": ("trigger_event",),
    "socketio.async_manager:AsyncManager.emit": ("_send_packet",),
    "socketio.async_manager:AsyncManager.enter_room": ("basic_enter_room",),
    "socketio.async_manager:AsyncManager.leave_room": ("basic_leave_room",),
    "socketio.async_manager:AsyncManager.disconnect": ("basic_disconnect",),
}
