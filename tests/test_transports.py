"""The official JS client reaches every namespace over WebSocket and over polling only,
emits with acks, joins rooms and receives broadcasts; the same with the msgpack parser."""

from __future__ import annotations

import pytest

TRANSPORTS = [["websocket"], ["polling"]]


@pytest.fixture(params=["json", "msgpack"])
def parser(request) -> str:
    return request.param


@pytest.mark.parametrize("transports", TRANSPORTS, ids=["websocket", "polling"])
async def test_every_namespace_over_each_transport(servers, js, transports, parser):
    srv = servers(env={"PARSER": parser, "ADMIN_PASSWORD": "s3cret-operator"})
    opts = {"transports": transports, "parser": parser}
    for ns, auth in (("/chat", {}), ("/game", {}), ("/collab", {}),
                     ("/admin", {"username": "admin", "password": "s3cret-operator"})):
        state = await js.connect(ns, srv.url + ns, auth=auth, **opts)
        assert state["connected"], (ns, state)
        assert state["transport"] == transports[0]
    # /admin greets an operator with its session and the feature list.
    await js.wait("/admin", "config")
    assert (await js.wait("/admin", "session"))[0]["args"][0]

    # emit with ack, join a room, receive the broadcast (with its offset on /chat)
    ack = await js.emit("/chat", "join", {"room": "lobby"})
    assert ack["ok"] is True and ack["room"] == "lobby"
    ack = await js.emit("/chat", "message", {"room": "lobby", "text": "hello"})
    assert ack["ok"] is True
    [event] = await js.wait("/chat", "message")
    message, offset = event["args"]
    assert message["text"] == "hello" and message["room"] == "lobby"
    # the offset string names the message's position in its room's channel: its seq
    assert isinstance(offset, str) and offset.split("~")[0] == str(message["seq"]) == str(ack["seq"])

    ack = await js.emit("/game", "create", {"name": "g1", "capacity": 2})
    assert ack["ok"] and ack["game"]["capacity"] == 2
    ack = await js.emit("/game", "join", {"game": ack["game"]["id"]})
    assert ack["ok"] and ack["state"]["players"][0]["x"] >= 0

    ack = await js.emit("/collab", "open", {"doc": "d1"})
    assert ack["ok"] and "$bin" in ack["update"]


async def test_two_clients_broadcast_between_transports(server, js):
    await js.connect("ws", server.url + "/chat", transports=["websocket"])
    await js.connect("poll", server.url + "/chat", transports=["polling"])
    for name in ("ws", "poll"):
        assert (await js.emit(name, "join", {"room": "r"}))["ok"]
    await js.emit("ws", "message", {"room": "r", "text": "from ws"})
    await js.emit("poll", "message", {"room": "r", "text": "from polling"})
    for name in ("ws", "poll"):
        texts = [e["args"][0]["text"] for e in await js.wait(name, "message", 2)]
        assert texts == ["from ws", "from polling"]


async def test_unknown_namespace_is_refused_with_the_spec_message(server, js):
    state = await js.connect("x", server.url + "/nope", transports=["websocket"], expect_error=True)
    assert not state["connected"]
    assert state["errors"][0]["message"] == "Invalid namespace"


async def test_pages_and_probes_are_served(server):
    assert server.get("/healthz")[0] == 200
    status, body = server.get("/readyz")
    assert status == 200 and '"ready"' in body
    status, body = server.get("/")
    assert status == 200 and "<html" in body.lower()
    status, body = server.get("/vendor/socket.io.min.js")
    assert status == 200 and len(body) > 10_000
    assert server.get("/vendor/../../pyproject.toml")[0] == 404


def _handshake(server, origin: str, websocket: bool = False) -> int:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    headers = {"Origin": origin}
    if websocket:
        headers.update({"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    transport = "websocket" if websocket else "polling"
    conn.request("GET", f"/socket.io/?EIO=4&transport={transport}", headers=headers)
    status = conn.getresponse().status
    conn.close()
    return status


def test_cross_site_origins_are_refused_for_polling_and_websocket(server):
    assert _handshake(server, "http://evil.example") == 400
    assert _handshake(server, "http://evil.example", websocket=True) == 400
    # the configured origins and the server's own origin are accepted
    assert _handshake(server, f"http://localhost:{server.port}") == 200
    assert _handshake(server, f"http://127.0.0.1:{server.port}", websocket=True) == 101


@pytest.mark.parametrize("compression", ["false", "true"])
async def test_websocket_compression_follows_the_config(servers, compression, tmp_path):
    import aiohttp

    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[server]\nwebsocket_compression = {compression}\n")
    srv = servers(args=["--config", str(cfg)])
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{srv.url}/socket.io/?EIO=4&transport=websocket", compress=15) as ws:
            extensions = ws._response.headers.get("Sec-WebSocket-Extensions", "")
            assert ("permessage-deflate" in extensions) == (compression == "true"), extensions
            assert (await ws.receive(timeout=5)).data.startswith("0")
