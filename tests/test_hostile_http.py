"""Hostile input at the Engine.IO / HTTP layer: every request gets an answer, nothing is left
behind, and the log stays short. Real server processes, raw clients for the malformed input,
the official JS client as the bystander that must not notice."""

from __future__ import annotations

import asyncio
import json
import socket
import tempfile

import aiohttp

from test_hostile import RS, Raw, bystander, bystander_still_fine, internal

# The tables that must return to where they were once hostile sessions are gone.
TABLES = ("engineio_sessions", "environ", "rate_buckets", "per_ip", "http_requests", "websocket_transports")


def config_file(text: str) -> str:
    """A TOML configuration file holding ``text``, for ``--config``."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(text)
    return f.name


async def settled(server, baseline: dict[str, float], within: float = 5.0) -> dict[str, float]:
    """The internal-table gauges once they are back at ``baseline`` (or as they are after ``within`` s)."""
    for _ in range(int(within * 10)):
        now = internal(server)
        if all(now.get(k) == baseline.get(k) for k in TABLES):
            break
        await asyncio.sleep(0.1)
    return {k: now.get(k) for k in TABLES}


def log_lines(server, needle: str) -> list[str]:
    return [line for line in server.output().splitlines() if needle in line]


# ---------------------------------------------------------------------- polling POST bodies

# body -> the POST's status: a packet type a client may not send (OPEN, PING, unknown) ends the
# session with 400 before any packet of the payload is handled; NOOP and UPGRADE are ignored
# (as the Node server does); PONG, CLOSE and MESSAGE are handled.
POST_BODIES = {
    "2": 400, "0": 400, RS.join(["2"] * 3): 400, "6": 200, RS.join(["6"] * 3): 200,
    "2" + RS + "6" + RS + "0": 400, "40/chat," + RS + "2": 400, "5": 200, "3": 200, "3probe": 200,
    "1": 200, "4": 200,
}


async def test_every_polling_post_is_answered_whatever_it_holds(servers, js):
    # A short heartbeat so the GET after a POST that keeps the session is answered (by the ping).
    srv = servers(env={"PING_INTERVAL": "1", "PING_TIMEOUT": "2"})
    await bystander(js, srv)
    await asyncio.sleep(0.2)
    baseline = internal(srv)
    clients: list[Raw] = []

    async def one(body: str) -> tuple[str, int, int]:
        c = Raw(srv)
        clients.append(c)
        await c.open_polling()
        try:
            async with asyncio.timeout(5):
                post_status, _ = await c.post(body)
        except TimeoutError:
            raise AssertionError(f"POST {body!r} was never answered") from None
        try:
            async with asyncio.timeout(5):
                get_status, _ = await c.get()
        except TimeoutError:
            raise AssertionError(f"GET after POST {body!r} was never answered") from None
        return body, post_status, get_status

    try:
        # Several of each at once, as the report had it (300 hanging POSTs).
        results = await asyncio.gather(*(one(body) for body in POST_BODIES for _ in range(5)))
        for body, post_status, get_status in results:
            assert post_status == POST_BODIES[body], (body, post_status)
            if post_status == 400 or body == "1":
                assert get_status == 400, (body, get_status)  # the session is gone
            elif body != "4":  # an empty Socket.IO packet closes the session at that level
                assert get_status == 200, (body, get_status)
        for c in clients:  # close the sessions that are still open
            await c.post("1")
    finally:
        for c in clients:
            await c.close()
    # No session, no environ, no per-address slot and no request handler left behind.
    assert await settled(srv, baseline) == {k: baseline.get(k) for k in TABLES}
    await bystander_still_fine(js, srv)


async def test_unknown_engineio_packet_type_gets_400_and_one_short_log_line(server, js):
    await bystander(js, server)
    for body in ("9hello", "7", "4hi" + RS + "8"):
        c = Raw(server)
        try:
            await c.open_polling()
            assert (await c.post(body))[0] == 400, body
            await asyncio.sleep(0.2)
            lines = log_lines(server, c.sid)
            assert len(lines) == 1 and len(lines[0]) < 200, (body, lines)
            assert (await c.get())[0] == 400, body  # the session ended
        finally:
            await c.close()
    # the same over a WebSocket: closed, with no traceback either
    c = Raw(server)
    try:
        await c.open_ws()
        await c.ws.send_str("9hello")
        assert await c.closed_within(2)
    finally:
        await c.close()
    assert "Traceback" not in server.output()
    await bystander_still_fine(js, server)


# ---------------------------------------------------------------------- malformed HTTP

MALFORMED_HTTP = {
    "negative Content-Length": b"POST /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n"
                               b"Content-Length: -5\r\n\r\n",
    "Content-Length with chunked": b"POST /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n"
                                   b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "70 KB header": b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nX-Big: "
                    + b"a" * 70_000 + b"\r\n\r\n",
}


async def send_raw(port: int, data: bytes) -> bytes:
    """Send ``data`` on a new connection and return the status line of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        try:
            await writer.drain()
        except ConnectionError:
            pass  # the server may answer and close before reading all of it
        async with asyncio.timeout(5):
            return await reader.readline()
    finally:
        writer.close()


async def test_malformed_http_gets_400_and_a_bounded_number_of_short_log_lines(server, js):
    await bystander(js, server)
    for name, data in MALFORMED_HTTP.items():
        for _ in range(20):
            status_line = await send_raw(server.port, data)
            assert status_line.split(b" ")[1:2] == [b"400"], (name, status_line)
    await asyncio.sleep(0.2)
    output = server.output()
    assert "Traceback" not in output
    warnings = log_lines(server, "malformed HTTP request")
    assert 1 <= len(warnings) <= 3, warnings  # rate-limited: 60 requests, a line or two
    assert all(len(line) < 300 for line in warnings), warnings
    await bystander_still_fine(js, server)


async def test_bad_request_log_interval_zero_logs_every_malformed_request(servers):
    srv = servers(args=["--config", config_file("[server]\nbad_request_log_interval = 0\n")])
    for _ in range(5):
        await send_raw(srv.port, MALFORMED_HTTP["negative Content-Length"])
    await asyncio.sleep(0.2)
    assert len(log_lines(srv, "malformed HTTP request")) == 5
    assert "Traceback" not in srv.output()


async def test_engineio_errors_are_logged_once_in_the_servers_format(server):
    # python-engineio adds a handler of its own to its logger unless that logger has a level:
    # every line it logged was written twice, once without timestamp or level.
    c = Raw(server)
    try:
        c.sid = "no-such-session"
        assert (await c.get())[0] == 400
    finally:
        await c.close()
    await asyncio.sleep(0.2)
    lines = log_lines(server, "Invalid session no-such-session")
    assert len(lines) == 1 and " ERROR engineio.server: " in lines[0], lines


# ---------------------------------------------------------------------- Socket.IO CONNECT

async def test_connect_to_a_huge_namespace_echoes_a_capped_name(server, js):
    await bystander(js, server)
    huge = "/" + "n" * 500_000
    c, p = Raw(server), Raw(server)
    try:
        await c.open_ws()
        await c.ws.send_str("40" + huge + ",")
        reply = (await c.ws.receive(timeout=5)).data
        assert len(reply) < 300, len(reply)
        namespace, _, data = reply[2:].partition(",")
        assert reply.startswith("44/") and huge.startswith(namespace)
        assert json.loads(data) == {"message": "Invalid namespace"}
        # the same over long-polling
        await p.open_polling()
        assert (await p.post("40" + huge + ","))[0] == 200
        status, body = await p.get()
        assert status == 200 and len(body) < 300 and body.startswith("44/"), body[:100]
    finally:
        await c.close()
        await p.close()
    # A name under the cap still gets the usual error, which the JS client understands.
    state = await js.connect("long", server.url + "/" + "n" * 100, transports=["websocket"], expect_error=True)
    assert state["errors"] and state["errors"][0]["message"] == "Invalid namespace", state
    await bystander_still_fine(js, server)


# ---------------------------------------------------------------------- sessions per address

def bad_handshake(port: int, key: str = "bad key", upgrade: bool = True) -> bytes:
    """A WebSocket handshake for a new session with a bad key, or without ``Connection: Upgrade``."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall((f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                   f"Upgrade: websocket\r\n{'Connection: Upgrade' if upgrade else 'Connection: keep-alive'}\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        return s.recv(4096).split(b"\r\n")[0]


async def test_bad_websocket_handshakes_leave_no_session_behind(servers, js):
    srv = servers(env={"MAX_CONNECTIONS_PER_IP": "3"})
    baseline = internal(srv)
    for _ in range(4):
        assert b" 400 " in bad_handshake(srv.port)
    for _ in range(2):
        assert b" 400 " in bad_handshake(srv.port, key="dGhlIHNhbXBsZSBub25jZQ==", upgrade=False)
    # a good client still connects at once: the bad ones hold no slot of the per-address cap
    state = await js.connect("ok", srv.url + "/chat", transports=["websocket"])
    assert state["connected"], state
    await js.emit("ok", "join", {"room": "calm"})
    assert internal(srv)["per_ip"] == baseline["per_ip"] + 1
    # a bad upgrade of an existing polling session refuses the upgrade, not the session
    c = Raw(srv)
    try:
        await c.open_polling()
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write((f"GET /socket.io/?EIO=4&transport=websocket&sid={c.sid} HTTP/1.1\r\nHost: x\r\n"
                      "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: bad\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        assert b" 400 " in await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        assert await c.post("40/chat,") == (200, "ok")
        assert (await c.get())[1].startswith("40/chat,")
    finally:
        await c.close()
    await bystander_still_fine(js, srv)


async def test_sessions_are_counted_per_client_address(servers):
    # 127.0.0.2 is another loopback address: a client there is another address to the server.
    srv = servers(env={"MAX_CONNECTIONS_PER_IP": "2"})
    url = f"{srv.url}/socket.io/?EIO=4&transport=polling"
    other = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0)))
    local = aiohttp.ClientSession()
    try:
        for _ in range(2):
            async with other.get(url) as r:
                assert r.status == 200
        async with other.get(url) as r:
            assert r.status == 429  # the third from the same address
        async with local.get(url) as r:
            assert r.status == 200  # another address is not charged for them
    finally:
        await other.close()
        await local.close()


# ---------------------------------------------------------------------- WebSocket bookkeeping

async def test_websocket_sessions_leave_no_transport_behind(servers, js):
    # The engine keeps each WebSocket's TCP transport while it is open (to abort a stuck one).
    srv = servers()
    await bystander(js, srv)
    await asyncio.sleep(0.2)
    baseline = internal(srv)
    for i in range(6):
        c = Raw(srv)
        try:
            if i % 2:
                await c.open_ws()
                await c.ws.send_str("40/chat,")
                await c.ws.receive(timeout=5)
                if i % 3 == 0:
                    await c.ws.send_str("1")  # a client that says goodbye
            else:  # polling, upgraded to a WebSocket
                await c.open_polling()
                c.ws = await c.http.ws_connect(c.url(transport="websocket", sid=c.sid))
                await c.ws.send_str("2probe")
                assert (await c.ws.receive(timeout=5)).data == "3probe"
                await c.ws.send_str("5")
        finally:
            await c.close()
    assert await settled(srv, baseline) == {k: baseline.get(k) for k in TABLES}
    await bystander_still_fine(js, srv)
