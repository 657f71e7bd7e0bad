"""Hostile and malformed input: each case gets a clear error or a closed connection, never a
crash, a hang or unbounded memory, and every other client carries on unaffected."""

from __future__ import annotations

import asyncio
import json
import socket

import aiohttp
import pytest


RS = "\x1e"  # Engine.IO v4 payload record separator


class Raw:
    """A raw Engine.IO v4 / Socket.IO v5 client over polling or WebSocket."""

    def __init__(self, server) -> None:
        self.server = server
        self.http = aiohttp.ClientSession()
        self.sid: str | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    def url(self, **query: str) -> str:
        q = "&".join(f"{k}={v}" for k, v in {"EIO": "4", **query}.items())
        return f"{self.server.url}/socket.io/?{q}"

    async def open_polling(self) -> dict:
        async with self.http.get(self.url(transport="polling")) as r:
            text = await r.text()
        assert text.startswith("0"), text
        handshake = json.loads(text[1:])
        self.sid = handshake["sid"]
        return handshake

    async def post(self, body: bytes | str, **headers: str) -> tuple[int, str]:
        async with self.http.post(self.url(transport="polling", sid=self.sid), data=body, headers=headers) as r:
            return r.status, await r.text()

    async def get(self) -> tuple[int, str]:
        async with self.http.get(self.url(transport="polling", sid=self.sid)) as r:
            return r.status, await r.text()

    async def open_ws(self) -> None:
        self.ws = await self.http.ws_connect(self.url(transport="websocket"))
        msg = await self.ws.receive(timeout=5)
        assert msg.data.startswith("0")
        self.sid = json.loads(msg.data[1:])["sid"]

    async def closed_within(self, seconds: float) -> bool:
        """True when the server closes the WebSocket within ``seconds``."""
        assert self.ws is not None
        try:
            async with asyncio.timeout(seconds):
                while True:
                    msg = await self.ws.receive()
                    if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING,
                                    aiohttp.WSMsgType.ERROR):
                        return True
                    if msg.type == aiohttp.WSMsgType.TEXT and msg.data == "2":
                        await self.ws.send_str("3")
        except TimeoutError:
            return False

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        await self.http.close()


@pytest.fixture
async def raw(server):
    clients = []

    async def make(srv=None):
        c = Raw(srv or server)
        clients.append(c)
        return c

    yield make
    for c in clients:
        await c.close()


async def bystander(js, server):
    """A normal client that must be unaffected by whatever the hostile one does."""
    await js.connect("ok", server.url + "/chat", transports=["websocket"])
    await js.emit("ok", "join", {"room": "calm"})


async def bystander_still_fine(js, server):
    ack = await js.emit("ok", "message", {"room": "calm", "text": "still here"})
    assert ack["ok"]
    assert server.get("/healthz")[0] == 200


# ---------------------------------------------------------------------- HTTP level


async def test_http_errors_follow_the_spec(server, raw):
    c = await raw()
    async with c.http.put(f"{server.url}/socket.io/?EIO=4&transport=polling") as r:
        assert r.status == 400
    async with c.http.get(f"{server.url}/socket.io/?EIO=4") as r:
        assert r.status == 400  # no transport
    async with c.http.get(f"{server.url}/socket.io/?EIO=4&transport=carrier-pigeon") as r:
        assert r.status == 400
    handshake = await c.open_polling()
    assert handshake["pingInterval"] == 25000 and handshake["pingTimeout"] == 20000
    assert await c.post("40/chat,") == (200, "ok")
    async with c.http.get(f"{server.url}/socket.io/?EIO=4&transport=polling&sid=nope") as r:
        assert r.status == 400


async def test_oversized_polling_body_gets_413_at_once(server, raw, js):
    await bystander(js, server)
    c = await raw()
    await c.open_polling()
    started = asyncio.get_running_loop().time()
    status, _ = await c.post(b"4" + b"x" * 1_100_000)
    assert status == 413
    assert asyncio.get_running_loop().time() - started < 3
    assert (await c.get())[0] == 400  # the session is gone
    await bystander_still_fine(js, server)


async def test_slow_polling_body_is_refused(servers, js):
    srv = servers(env={}, args=["--config", _cfg("[limits]\nbody_timeout = 0.5\n")])
    await bystander(js, srv)
    c = Raw(srv)
    try:
        await c.open_polling()
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write((f"POST /socket.io/?EIO=4&transport=polling&sid={c.sid} HTTP/1.1\r\nHost: x\r\n"
                      f"Content-Type: text/plain\r\nContent-Length: 1000\r\n\r\n4abc").encode())
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        assert b" 408 " in status_line
        writer.close()
    finally:
        await c.close()
    await bystander_still_fine(js, srv)


async def test_large_event_over_polling_arrives_whole(servers, js):
    srv = servers(args=["--config", _cfg("[limits]\nmax_event_bytes = 900000\n")])
    for name, transports in (("poll", ["polling"]), ("ws", ["websocket"])):
        await js.connect(name, srv.url + "/collab", transports=transports)
        await js.emit(name, "open", {"doc": "big"})
    update = (await js.call("eval", code="""
        const Y = ctx.require('yjs');
        const doc = new Y.Doc(); doc.getText('text').insert(0, 'x'.repeat(200000));
        return Y.encodeStateAsUpdate(doc);"""))["value"]
    ack = await js.emit("poll", "update", {"doc": "big", "update": update}, timeout=10000)
    assert ack["ok"], ack
    [got] = await js.wait("ws", "update", 1)
    assert got["args"][0]["update"] == update


async def test_too_many_packets_and_undecodable_payloads(server, raw, js):
    await bystander(js, server)
    c = await raw()
    await c.open_polling()
    status, _ = await c.post(RS.join(["3"] * 300))
    assert status == 400
    assert (await c.get())[0] == 400
    d = await raw()
    await d.open_polling()
    status, _ = await d.post("\x00garbage" + RS + "9nope")
    assert status == 400
    assert (await d.get())[0] == 400
    await bystander_still_fine(js, server)


async def test_overlapping_polls_end_the_session(server, raw):
    c = await raw()
    await c.open_polling()
    await c.post("40/chat,")
    assert (await c.get())[1].startswith("40/chat,")  # the CONNECT reply
    first = asyncio.create_task(c.get())  # now pending: nothing to send
    await asyncio.sleep(0.2)
    second = await c.get()
    assert second[0] == 400
    status, body = await first
    assert status == 200 and body.split(RS)[0] == "1"  # the first one is told the session closed
    assert (await c.get())[0] == 400


async def test_connections_per_ip_are_capped(servers, js):
    srv = servers(env={"MAX_CONNECTIONS_PER_IP": "3"})
    clients = [Raw(srv) for _ in range(4)]
    try:
        for c in clients[:3]:
            await c.open_polling()
        async with clients[3].http.get(clients[3].url(transport="polling")) as r:
            assert r.status == 429
        # a closed session frees its slot
        await clients[0].post("1")
        await asyncio.sleep(0.2)
        await clients[3].open_polling()
    finally:
        for c in clients:
            await c.close()


async def test_session_that_never_joins_a_namespace_is_closed(servers, raw):
    srv = servers(env={"CONNECT_TIMEOUT": "0.5"})
    c = await raw(srv)
    await c.open_ws()
    assert await c.closed_within(3)


# ---------------------------------------------------------------------- Socket.IO packets


MALFORMED = {
    "unknown packet type": "47",
    "event before CONNECT": '42/chat,["message",{}]',
    "non-array event": '42/chat,{}',
    "empty event array": "42/chat,[]",
    "event name not a string": "42/chat,[1,2]",
    "bad ack id": '42/chat,abc["message"]',
    "absurd ack id": '42/chat,99999999999999999999["message"]',
    "reserved event connect": '42/chat,["connect"]',
    "reserved event disconnect": '42/chat,["disconnect","x"]',
    "client CONNECT_ERROR": '44/chat,{"message":"x"}',
    "non-object auth": '40/chat,"a string"',
    "deep nesting": "42/chat," + "[" * 5000 + "]" * 5000,
    "invalid JSON": '42/chat,["message",{]',
    "zero attachments": '450-/chat,["m",{"_placeholder":true,"num":0}]',
    "too many attachments": '4511-/chat,["m"]',
}


@pytest.mark.parametrize("name", list(MALFORMED))
async def test_malformed_packets_close_the_connection_at_once(server, raw, js, name):
    await bystander(js, server)
    c = await raw()
    await c.open_ws()
    frame = MALFORMED[name]
    if name not in ("event before CONNECT", "non-object auth"):
        await c.ws.send_str("40/chat,")
        msg = await c.ws.receive(timeout=5)
        assert msg.data.startswith("40/chat,")
    await c.ws.send_str(frame)
    if name == "non-object auth":
        msg = await c.ws.receive(timeout=5)
        assert msg.type != aiohttp.WSMsgType.TEXT or not msg.data.startswith("40/chat,{")
    assert await c.closed_within(2), name
    await bystander_still_fine(js, server)


async def test_bad_msgpack_closes_the_connection(servers, js):
    srv = servers(env={"PARSER": "msgpack"})
    # no auth: notepack sends `undefined`, which must be accepted as "no auth"
    await js.connect("ok", srv.url + "/chat", transports=["websocket"], parser="msgpack")
    await js.emit("ok", "join", {"room": "calm"})
    c = Raw(srv)
    try:
        await c.open_ws()
        await c.ws.send_bytes(b"4\xc1\xc1\xff not msgpack")
        assert await c.closed_within(2)
    finally:
        await c.close()
    await bystander_still_fine(js, srv)


async def test_invalid_utf8_closes_the_connection(server, raw, js):
    await bystander(js, server)
    c = await raw()
    await c.open_ws()
    # a text frame must be UTF-8: aiohttp refuses it at the WebSocket layer
    c.ws._writer.transport.write(b"\x81\x04\x34\x32\xff\xfe")  # FIN+text, len 4, "42" + invalid bytes
    assert await c.closed_within(2)
    await bystander_still_fine(js, server)


async def test_partial_binary_packet_is_dropped(servers, js):
    server = servers(args=["--config", _cfg("[limits]\nattachment_timeout = 0.5\n")])
    await bystander(js, server)
    c = Raw(server)
    try:
        await c.open_ws()
        await c.ws.send_str("40/chat,")
        await c.ws.receive(timeout=5)
        await c.ws.send_str('452-/chat,["message",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]')
        await c.ws.send_bytes(b"only one of two")
        await asyncio.sleep(0.1)
        assert internal(server)["binary_packets"] == 1  # held, waiting for the second attachment
        await asyncio.sleep(0.8)
        assert internal(server)["binary_packets"] == 0  # dropped after the timeout, not kept forever
    finally:
        await c.close()
    await bystander_still_fine(js, server)


@pytest.mark.parametrize("placeholder", ['{"_placeholder":true,"num":5}', '{"_placeholder":true,"num":"x"}',
                                         '{"_placeholder":true,"num":-1}'])
async def test_bad_binary_placeholders_close_the_connection(server, raw, js, placeholder):
    await bystander(js, server)
    c = await raw()
    await c.open_ws()
    await c.ws.send_str("40/chat,")
    await c.ws.receive(timeout=5)
    await c.ws.send_str(f'451-/chat,["message",{placeholder}]')
    await c.ws.send_bytes(b"attachment")
    assert await c.closed_within(2)  # (-1 would otherwise silently read the last attachment)
    await bystander_still_fine(js, server)


async def test_event_rate_limit_answers_with_an_error_ack(servers, js):
    srv = servers(env={"EVENTS_PER_SECOND": "5"}, args=["--config", _cfg("[limits]\nevent_burst = 5\n")])
    await js.connect("a", srv.url + "/chat", transports=["websocket"])
    results = (await js.call("emitMany", name="a", event="whoami", argsList=[[]] * 30))["results"]
    refused = [r for r in results if r.get("ok") is False]
    assert refused and all(r["error"]["code"] == "rate_limited" for r in refused)
    assert len(results) - len(refused) <= 7
    await asyncio.sleep(1.2)
    assert (await js.emit("a", "whoami"))["ok"]  # the bucket refills


async def test_binary_events_over_the_rate_limit_get_an_error_ack_not_a_disconnect(servers, js):
    srv = servers(env={"EVENTS_PER_SECOND": "5", "EVENT_BURST": "5"})
    await js.connect("a", srv.url + "/collab", transports=["websocket"])
    await js.emit("a", "open", {"doc": "d"})
    update = (await js.call("eval", code="""
        const Y = ctx.require('yjs'); const doc = new Y.Doc(); doc.getText('t').insert(0, 'x');
        return Y.encodeStateAsUpdate(doc);"""))["value"]
    results = (await js.call("emitMany", name="a", event="update",
                             argsList=[[{"doc": "d", "update": update}]] * 20))["results"]
    assert any(r.get("error", {}).get("code") == "rate_limited" for r in results)
    assert (await js.state("a"))["connected"] and (await js.state("a"))["connects"] == 1
    await asyncio.sleep(1.2)
    assert (await js.emit("a", "update", {"doc": "d", "update": update}))["ok"]


async def test_oversized_event_gets_an_error_ack(servers, js):
    srv = servers(args=["--config", _cfg("[limits]\nmax_event_bytes = 1024\n")])
    await js.connect("a", srv.url + "/chat", transports=["websocket"])
    await js.emit("a", "join", {"room": "r"})
    ack = await js.emit("a", "message", {"room": "r", "text": "x" * 2000})
    assert ack["ok"] is False and ack["error"]["code"] == "payload_too_large"
    assert (await js.emit("a", "message", {"room": "r", "text": "small"}))["ok"]


def _cfg(text: str) -> str:
    import tempfile

    f = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    f.write(text)
    f.close()
    return f.name



def internal(server) -> dict[str, float]:
    _, body = server.get("/metrics")
    out = {}
    for line in body.splitlines():
        if line.startswith("rt_internal_entries{"):
            table = line.split('table="')[1].split('"')[0]
            out[table] = float(line.rsplit(" ", 1)[1])
    return out


async def test_per_connection_state_returns_to_baseline(server, js, raw):
    await bystander(js, server)
    await asyncio.sleep(0.2)
    baseline = internal(server)
    assert baseline["engineio_sessions"] == 1 and baseline["identities"] == 1
    for i in range(30):
        c = await raw()
        await c.open_ws()
        await c.ws.send_str("40/chat,")
        await c.ws.receive(timeout=5)
        await c.ws.send_str('451-/chat,["message",{"_placeholder":true,"num":0}]' if i % 3 else "42/chat,{}")
        await c.close()
        p = await raw()
        await p.open_polling()
        if i % 2:
            await p.post("40/chat,")
            await p.post("1")  # a polite client closes its session
        else:
            assert (await p.post("\x00bad"))[0] == 400
        await p.close()
    for _ in range(50):
        now = internal(server)
        if all(now[k] == baseline[k] for k in ("engineio_sessions", "environ", "binary_packets", "rate_buckets",
                                               "recovery_states", "identities", "per_ip",
                                               # a node unsubscribes half a second after a channel's last member left
                                               "channel_cursors", "socket_positions")):
            break
        await asyncio.sleep(0.1)
    assert now == baseline, now
    # The gauge of followed channels is the cursors' count (read at the scrape).
    _, body = server.get("/metrics")
    subscribed = [float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
                  if line.startswith("rt_channels_subscribed ")]
    assert subscribed == [now["channel_cursors"]] and subscribed[0] > 0, subscribed
    await bystander_still_fine(js, server)


async def test_slow_consumer_is_cut_recoverably_and_others_get_everything(servers, js):
    srv = servers(env={"EVENTS_PER_SECOND": "100000", "EVENT_BURST": "100000"},
                  args=["--config", _cfg("[limits]\nsend_queue_max = 20\n")])
    await js.connect("pub", srv.url + "/chat", transports=["websocket"])
    await js.connect("fast", srv.url + "/chat", transports=["websocket"])
    for name in ("pub", "fast"):
        await js.emit(name, "join", {"room": "r"})
    # a WebSocket client that joins and then never reads, with a tiny receive buffer
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", srv.port))
    sock.sendall((f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n"
                  "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    sock.recv(4096)

    def frame(text: str) -> bytes:
        data = text.encode()
        assert len(data) < 126
        mask = b"\x01\x02\x03\x04"
        return bytes([0x81, 0x80 | len(data)]) + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(data))

    sock.sendall(frame("40/chat,") + frame('42/chat,1["join",{"room":"r"}]'))
    await asyncio.sleep(0.3)
    text = "x" * 3900
    for i in range(0, 1500, 50):
        results = (await js.call("emitMany", name="pub", event="message",
                                 argsList=[[{"room": "r", "text": f"{i + k} {text}"}] for k in range(50)]))["results"]
        assert all(r["ok"] for r in results), results[0]
    events = await js.wait("fast", "message", 1500, timeout=20000)
    assert len(events) == 1500
    from test_delivery import metric

    assert metric(srv, "rt_slow_consumers_total") >= 1
    assert internal(srv)["engineio_sessions"] == 2  # the slow one is gone; pub and fast remain
    # its TCP connection was dropped, not left to a writer that would wait forever
    sock.settimeout(5)
    try:
        while sock.recv(65536):  # what was already sent, then the end: EOF or reset, not a hang
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    sock.close()


async def test_garbage_in_redis_is_never_trusted(servers, js, redis_url, redis_server):
    env = {"REDIS_URL": redis_url}
    n1, n2 = servers(env=env), servers(env=env)
    await js.connect("a", n1.url + "/chat", transports=["websocket"])
    await js.connect("b", n2.url + "/chat", transports=["websocket"])
    for name in ("a", "b"):
        await js.emit(name, "join", {"room": "r"})
    # someone with access to Redis writes junk where the nodes read
    # (a notification that is not one; the channel log's own tests cover junk in its streams)
    redis_server.cli("PUBLISH", "rt:{/chat|room:r}:pub", "\x93not-a-publication")
    redis_server.cli("PUBLISH", "rt:{/chat|room:r}:pub", "\x95\x01\xcd\xff\xff\xa1e\x01\xc4\x01x")
    redis_server.cli("PUBLISH", "rt:{bus}", "cos\nsystem\n(S'echo pickle'\ntR.")
    redis_server.cli("SET", "rt:session:forged", "junk")
    redis_server.cli("HSET", "rt:{nodes}:info", "evil", "\xc1")
    await js.connect("c", n1.url + "/chat", transports=["websocket"], auth={"pid": "forged", "offset": "0~00000000"})
    assert (await js.state("c"))["recovered"] is False
    await js.emit("a", "message", {"room": "r", "text": "still fine"})
    [event] = await js.wait("b", "message", 1)
    assert event["args"][0]["text"] == "still fine"
    for node in (n1, n2):
        assert node.get("/healthz")[0] == 200
