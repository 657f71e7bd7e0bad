"""The lean WebSocket (server/websocket.py) on the wire, with raw sockets against a real server:
the handshake (no extension accepted), ping/pong, the close handshake, every RFC 6455 violation
closed with its code (never a crash or a hang, other clients unaffected), the same answer as the
application's for a refused connect, and server shutdown closing these connections."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import importlib
import inspect
import json
import os
import socket
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from server import library_pins

MASK = b"\x37\xfa\x21\x3d"


def frame(opcode: int, payload: bytes = b"", fin: bool = True, masked: bool = True, rsv: int = 0,
          length: int | None = None) -> bytes:
    """A client frame; ``length`` overrides the length in the header (no payload is sent then)."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | rsv | opcode
    m = 0x80 if masked else 0
    if n < 126:
        head = bytes((b0, m | n))
    elif n < 65536:
        head = bytes((b0, m | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((b0, m | 127)) + n.to_bytes(8, "big")
    if not masked:
        return head + payload
    return head + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


class RawWebSocket:
    """A WebSocket client on a plain TCP connection: every byte it sends is chosen by the test."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        self.reader, self.writer, self.head = reader, writer, head

    @classmethod
    async def open(cls, port: int, headers: str = "", query: str = "EIO=4&transport=websocket",
                   key: str | None = None) -> "RawWebSocket":
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = key or base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET /socket.io/?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                      f"{headers}\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        return cls(reader, writer, head)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def recv(self, timeout: float = 5) -> tuple[int, bytes]:
        """The next frame from the server: (opcode, payload); (-1, b"") at EOF."""
        try:
            b0, b1 = await asyncio.wait_for(self.reader.readexactly(2), timeout)
        except asyncio.IncompleteReadError:
            return -1, b""
        assert not b1 & 0x80, "a server frame must not be masked"
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(await self.reader.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await self.reader.readexactly(8), "big")
        return b0 & 0x0F, await asyncio.wait_for(self.reader.readexactly(n), timeout)

    async def text(self, timeout: float = 5) -> str:
        """The next text message, answering the server's Engine.IO pings on the way."""
        while True:
            opcode, payload = await self.recv(timeout)
            assert opcode == 1, (opcode, payload)
            if payload != b"2":
                return payload.decode()
            self.send(frame(1, b"3"))

    async def closed_with(self, timeout: float = 5) -> int | None:
        """The code of the server's close frame (None for one without a code), after which
        the server must hang up; data frames before it are skipped."""
        while True:
            opcode, payload = await self.recv(timeout)
            assert opcode != -1, "EOF without a close frame"
            if opcode == 8:
                break
        code = int.from_bytes(payload[:2], "big") if payload else None
        assert await asyncio.wait_for(self.reader.read(), timeout) == b""  # then the server hangs up
        return code

    def close(self) -> None:
        self.writer.close()


async def opened(port: int, **kwargs) -> tuple[RawWebSocket, dict]:
    ws = await RawWebSocket.open(port, **kwargs)
    assert ws.head.startswith(b"HTTP/1.1 101 "), ws.head
    handshake = json.loads((await ws.text())[1:])
    return ws, handshake


async def bystander(js, server):
    await js.connect("ok", server.url + "/chat", transports=["websocket"])
    await js.emit("ok", "join", {"room": "calm"})


async def bystander_still_fine(js, server):
    ack = await js.emit("ok", "message", {"room": "calm", "text": "still here"})
    assert ack["ok"]
    assert server.get("/healthz")[0] == 200


async def test_handshake_pings_and_a_namespace_on_the_lean_path(server):
    key = base64.b64encode(os.urandom(16)).decode()
    ws, handshake = await opened(server.port, key=key,
                                 headers="Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n")
    try:
        accept = base64.b64encode(hashlib.sha1(key.encode() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        assert b"\r\nSec-WebSocket-Accept: " + accept + b"\r\n" in ws.head
        assert b"extensions" not in ws.head.lower()  # the deflate offer is declined, as Node does
        assert handshake["upgrades"] == [] and handshake["sid"]
        ws.send(frame(9, b"are you there"))
        assert await ws.recv() == (10, b"are you there")
        ws.send(frame(1, b"40/chat,"))
        assert (await ws.text()).startswith("40/chat,{")
        # fragmented, with a ping between the fragments
        ws.send(frame(1, b'42/chat,1["join",', fin=False) + frame(9, b"") + frame(0, b'{"room":"r"}]'))
        assert await ws.recv() == (10, b"")
        assert (await ws.text()).startswith("43/chat,1[")
        assert 'rt_http_requests_total{path="lean"} 1.0' in server.get("/metrics")[1]  # taken by server/websocket.py
    finally:
        ws.close()


async def test_close_handshake_ends_the_session(server):
    ws, _ = await opened(server.port)
    ws.send(frame(1, b"40/chat,"))
    await ws.text()
    ws.send(frame(8, (1000).to_bytes(2, "big") + b"bye"))
    assert await ws.closed_with() == 1000
    await all_forgotten(server)


def internal(server, table: str) -> float:
    """A row of the server's rt_internal_entries gauge."""
    for line in server.get("/metrics")[1].splitlines():
        if line.startswith(f'rt_internal_entries{{table="{table}"}} '):
            return float(line.split()[-1])
    raise AssertionError(f"no rt_internal_entries row for {table}")


async def all_forgotten(server) -> None:
    """The server keeps nothing of ended sessions: sessions, addresses, transports, requests."""
    tables = ("engineio_sessions", "per_ip", "websocket_transports", "http_requests", "environ")
    for _ in range(50):
        if not any(internal(server, t) for t in tables):
            return
        await asyncio.sleep(0.1)
    assert {t: internal(server, t) for t in tables} == dict.fromkeys(tables, 0.0)


VIOLATIONS = {
    "unmasked frame": (frame(1, b"40", masked=False), 1002),
    "rsv1 without deflate": (frame(1, b"40", rsv=0x40), 1002),
    "reserved opcode": (frame(3, b"x"), 1002),
    "reserved control opcode": (frame(12), 1002),
    "continuation of nothing": (frame(0, b"x"), 1002),
    "text inside a fragmented message": (frame(1, b"4", fin=False) + frame(1, b"0"), 1002),
    "fragmented ping": (frame(9, b"x", fin=False), 1002),
    "ping over 125 bytes": (frame(9, b"x" * 126), 1002),
    "message over max_payload": (frame(2, length=2**30), 1009),
    "fragments over max_payload": (frame(2, b"x" * 60000, fin=False) + frame(0, b"x" * 60000, fin=False)
                                   + frame(0, length=2**30), 1009),
    "invalid UTF-8 text": (frame(1, b"42[\"a\",\"\xc3\x28\"]"), 1007),
    "close frame with a 1-byte payload": (frame(8, b"\x03"), 1002),
    "close code 1005": (frame(8, (1005).to_bytes(2, "big")), 1002),
    "close code 999": (frame(8, (999).to_bytes(2, "big")), 1002),
    "close reason not UTF-8": (frame(8, (1000).to_bytes(2, "big") + b"\xff"), 1007),
}


@pytest.mark.parametrize("name", list(VIOLATIONS))
async def test_a_protocol_violation_is_closed_with_its_code(server, js, name):
    await bystander(js, server)
    data, code = VIOLATIONS[name]
    ws, _ = await opened(server.port)
    try:
        ws.send(frame(1, b"40/chat,"))
        assert (await ws.text()).startswith("40/chat,")
        ws.send(data)
        assert await ws.closed_with() == code
    finally:
        ws.close()
    await bystander_still_fine(js, server)
    assert internal(server, "engineio_sessions") <= 1  # the bystander's


async def test_a_bad_engineio_packet_ends_the_session_with_a_normal_close(server, js):
    await bystander(js, server)
    ws, _ = await opened(server.port)
    try:
        ws.send(frame(1, b"0"))  # an OPEN from a client
        assert await ws.closed_with() == 1000
    finally:
        ws.close()
    await bystander_still_fine(js, server)


async def test_frames_split_anywhere_and_many_in_one_read(server):
    ws, _ = await opened(server.port)
    try:
        data = frame(1, b"40/chat,") + frame(1, b'42/chat,1["join",{"room":"a"}]') + frame(9, b"p")
        for i in range(len(data)):
            ws.send(data[i:i + 1])
            await ws.writer.drain()
        got = [await ws.recv() for _ in range(3)]  # (the pong may overtake the handlers' answers)
        assert (10, b"p") in got
        answers = [m[1] for m in got if m[0] == 1]
        assert answers[0].startswith(b"40/chat,") and answers[1].startswith(b"43/chat,1[")
    finally:
        ws.close()


async def test_anything_else_still_goes_to_the_application(server):
    """Odd requests keep the application's answers (and its WebSocket for the rest)."""
    ws = await RawWebSocket.open(server.port, query="EIO=3&transport=websocket")
    assert ws.head.startswith(b"HTTP/1.1 400 "), ws.head
    ws.close()
    ws = await RawWebSocket.open(server.port, key="not-a-key")
    assert not ws.head.startswith(b"HTTP/1.1 101 "), ws.head
    ws.close()
    ws = await RawWebSocket.open(server.port, headers="Origin: http://evil.example\r\n")
    assert ws.head.startswith(b"HTTP/1.1 400 "), ws.head
    ws.close()
    before = server.get("/metrics")[1].count('rt_http_requests_total{path="lean"} 0.0')
    assert before == 1


async def test_shutdown_closes_lean_websockets(servers):
    srv = servers()
    ws, _ = await opened(srv.port)
    ws.send(frame(1, b"40/chat,"))
    assert (await ws.text()).startswith("40/chat,")
    srv.proc.send_signal(15)
    while True:  # a CONNECT_ERROR/DISCONNECT may come first; then the close frame or EOF
        opcode, _ = await ws.recv(timeout=10)
        if opcode in (8, -1):
            break
    assert await asyncio.to_thread(srv.proc.wait, 15) == 0
    ws.close()


# ---------------------------------------------------------------------- in process: the refused connect


@pytest.mark.parametrize("name", sorted(library_pins.MIRRORED))
def test_what_we_repeat_step_by_step_is_the_pinned_library_code(name):
    # create_session repeats _handle_connect; library_connect_event, _trigger_event's connect
    module, _, path = name.partition(":")
    target: Any = importlib.import_module(module)
    for step in path.split("."):
        target = getattr(target, step)
    source = inspect.getsource(target)
    assert hashlib.sha256(source.encode()).hexdigest() == library_pins.MIRRORED[name], \
        f"the library changed {name}: check our copy (server/library_pins.py MIRRORED says where) against it"


@pytest.mark.parametrize("refusal", [False, "go away", "raise", "plain False", "plain raise"])
async def test_a_refused_connect_gets_the_same_answer_as_on_the_application_path(refusal):
    # "raise": the handler fails (python-engineio refuses the session); "plain": the handler
    # is a plain function, not a coroutine function (python-engineio allows both)
    from server.polling import PollingFront, serve_polling_first
    from server.realtime import RealtimeEngine

    answers = []
    for lean in (False, True):
        eio = RealtimeEngine(async_mode="aiohttp", cors_allowed_origins="*")
        eio.lean_websocket = lean

        def refuse(environ):
            assert environ["HTTP_UPGRADE"] == "websocket" and environ["aiohttp.request"].remote == "127.0.0.1"
            if refusal.endswith("raise") if isinstance(refusal, str) else False:
                raise RuntimeError("the handler failed")
            return False if refusal == "plain False" else refusal

        if isinstance(refusal, str) and refusal.startswith("plain"):
            eio.on("connect", lambda sid, environ: refuse(environ))
        else:
            @eio.on("connect")
            async def connect(sid, environ):
                return refuse(environ)

        app = web.Application()
        eio.attach(app, engineio_path="engine.io")
        front = PollingFront(eio, path="/engine.io/")
        serve_polling_first(app, front)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(runner, sock).start()
        try:
            async with aiohttp.ClientSession() as session:
                url = f"http://127.0.0.1:{sock.getsockname()[1]}/engine.io/?EIO=4&transport=websocket"
                with pytest.raises(aiohttp.WSServerHandshakeError) as failed:
                    await session.ws_connect(url, headers={"Origin": "http://a.example"})
                async with session.get(url, headers={"Upgrade": "websocket", "Connection": "Upgrade",
                                                     "Sec-WebSocket-Version": "13",
                                                     "Sec-WebSocket-Key": base64.b64encode(b"k" * 16).decode(),
                                                     "Origin": "http://a.example"}) as r:
                    answers.append((failed.value.status, r.status, await r.text(),
                                    r.headers.get("Access-Control-Allow-Origin"), r.headers.get("Content-Type")))
            assert not eio.sockets and front.lean_requests == (2 if lean else 0)
            # A refused session never disconnects: its count against the client's address
            # is given back at the refusal (else every refusal leaked one).
            assert not eio._per_ip and not eio._ip_of and not eio._websockets
        finally:
            await runner.cleanup()
    assert answers[0] == answers[1] and answers[0][0] == 401, answers


async def test_frames_sent_right_behind_the_request_are_read(server):
    """A client may send frames before the 101 arrives: aiohttp holds them as the request's tail,
    and the connection reads them first."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                  f"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                  f"\r\n").encode() + frame(9, b"early") + frame(1, b"40/chat,"))
    ws = RawWebSocket(reader, writer, await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5))
    try:
        assert ws.head.startswith(b"HTTP/1.1 101 "), ws.head
        got = [await ws.recv() for _ in range(3)]
        assert got[0][0] == 1 and got[0][1].startswith(b"0{")  # the OPEN first
        assert (10, b"early") in got[1:] and [m for m in got[1:] if m[1].startswith(b"40/chat,{")]
    finally:
        ws.close()


async def test_server_lean_websocket_false_keeps_every_websocket_on_aiohttp(servers, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("[server]\nlean_websocket = false\n")
    srv = servers(args=["--config", str(config)])
    ws, _ = await opened(srv.port)
    try:
        ws.send(frame(1, b"40/chat,"))
        assert (await ws.text()).startswith("40/chat,{")
        metrics = srv.get("/metrics")[1]
        assert 'rt_http_requests_total{path="lean"} 0.0' in metrics
    finally:
        ws.close()
