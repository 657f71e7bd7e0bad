"""The conformance profile (python -m server --conformance) behaves as the Engine.IO v4 /
Socket.IO v5 specifications and their official test suites expect
(../shared/notes/protocol-conformance.md lists the 13 deviations of the stock libraries)."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from harness import ServerProcess, wait_port

RS = "\x1e"


@pytest.fixture
def profile():
    proc = ServerProcess(args=["--conformance", "--host", "127.0.0.1"])
    proc.args += ["--port", str(proc.port)]
    proc.start(wait=False)
    wait_port(proc.port)
    yield proc
    proc.kill()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


def url(proc, path="socket.io", **query) -> str:
    q = "&".join(f"{k}={v}" for k, v in {"EIO": "4", **query}.items())
    return f"{proc.url}/{path}/?{q}"


async def handshake(http, proc, path="socket.io") -> dict:
    async with http.get(url(proc, path, transport="polling")) as r:
        assert r.status == 200
        text = await r.text()
    assert text[0] == "0"
    return json.loads(text[1:])


async def test_handshake_timings_are_integer_milliseconds(profile, http):
    h = await handshake(http, profile, "engine.io")
    assert h["pingInterval"] == 300 and h["pingTimeout"] == 200 and h["maxPayload"] == 1000000
    assert h["upgrades"] == ["websocket"]


async def test_http_deviations(profile, http):
    async with http.get(url(profile, "engine.io")) as r:  # no transport
        assert r.status == 400
    async with http.get(url(profile, "engine.io", transport="unknown")) as r:
        assert r.status == 400
    async with http.put(url(profile, "engine.io", transport="polling")) as r:
        assert r.status == 400
    sid = (await handshake(http, profile, "engine.io"))["sid"]
    async with http.post(url(profile, "engine.io", transport="polling", sid=sid), data="4hello") as r:
        assert (r.status, await r.text()) == (200, "ok")
    async with http.get(url(profile, "engine.io", transport="polling", sid=sid)) as r:
        assert await r.text() == "4hello"  # the raw Engine.IO echo
    async with http.post(url(profile, "engine.io", transport="polling", sid=sid), data="\x00bad") as r:
        assert r.status == 400
    async with http.get(url(profile, "engine.io", transport="polling", sid=sid)) as r:
        assert r.status == 400  # an undecodable payload closed the session


async def test_heartbeat_is_enforced_on_time(profile, http):
    sid = (await handshake(http, profile, "engine.io"))["sid"]
    async with http.get(url(profile, "engine.io", transport="polling", sid=sid)) as r:
        assert (await r.text()) == "2"  # the ping, after 300 ms
    await asyncio.sleep(0.6)  # no pong within pingTimeout
    async with http.get(url(profile, "engine.io", transport="polling", sid=sid)) as r:
        assert r.status == 400


async def test_websocket_heartbeat_keeps_an_answering_client_and_drops_a_silent_one(profile, http):
    # The PING is a timer re-armed by each PONG (no Task per socket): several cycles in a row.
    ws = await http.ws_connect(url(profile, "engine.io", transport="websocket"))
    assert (await ws.receive(timeout=2)).data.startswith("0{")
    for _ in range(4):
        assert (await ws.receive(timeout=2)).data == "2"
        await ws.send_str("3")
    # Silent from now on: closed within pingInterval + pingTimeout (0.5 s), not left open.
    started = asyncio.get_running_loop().time()
    while (msg := await ws.receive(timeout=3)).type == aiohttp.WSMsgType.TEXT:
        assert msg.data in ("2", "1")  # the unanswered ping, then the CLOSE packet
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
    assert asyncio.get_running_loop().time() - started < 2.0
    await ws.close()


async def test_client_close_ends_a_pending_poll_with_noop(profile, http):
    sid = (await handshake(http, profile, "engine.io"))["sid"]
    pending = asyncio.create_task(http.get(url(profile, "engine.io", transport="polling", sid=sid)))
    await asyncio.sleep(0.05)
    async with http.post(url(profile, "engine.io", transport="polling", sid=sid), data="1") as r:
        assert r.status == 200
    response = await asyncio.wait_for(pending, 2)
    assert response.status == 200 and (await response.text()) == "6"


async def test_upgrade_ends_the_pending_poll_and_polling_is_refused_after(profile, http):
    sid = (await handshake(http, profile, "engine.io"))["sid"]
    pending = asyncio.create_task(http.get(url(profile, "engine.io", transport="polling", sid=sid)))
    await asyncio.sleep(0.1)  # the poll is pending when the upgrade starts, as with socket.io-client
    ws = await http.ws_connect(url(profile, "engine.io", transport="websocket", sid=sid))
    await ws.send_str("2probe")
    assert (await ws.receive(timeout=2)).data == "3probe"
    poll = await asyncio.wait_for(pending, 2)
    assert (await poll.text()) == "6"
    await ws.send_str("5")
    await ws.send_str("4over websocket")
    assert (await ws.receive(timeout=2)).data == "4over websocket"
    async with http.get(url(profile, "engine.io", transport="polling", sid=sid)) as r:
        assert r.status == 400
    await ws.close()


async def sio_ws(http, profile, namespace="/", auth=None):
    ws = await http.ws_connect(url(profile, transport="websocket"))
    assert (await ws.receive(timeout=2)).data.startswith("0")
    prefix = "" if namespace == "/" else namespace + ","
    await ws.send_str("40" + prefix + (json.dumps(auth) if auth is not None else ""))
    return ws, prefix


async def next_text(ws) -> str:
    while True:
        msg = await ws.receive(timeout=2)
        if msg.type != aiohttp.WSMsgType.TEXT:
            return ""
        if msg.data == "2":
            await ws.send_str("3")
            continue
        return msg.data


@pytest.mark.parametrize("namespace", ["/", "/custom"])
async def test_socketio_behaviours(profile, http, namespace):
    ws, prefix = await sio_ws(http, profile, namespace, {"token": "123"})
    connected = await next_text(ws)
    assert connected.startswith("40" + prefix) and "sid" in json.loads(connected[2 + len(prefix):])
    assert await next_text(ws) == "42" + prefix + '["auth",{"token":"123"}]'
    await ws.send_str("42" + prefix + '["message",1,"2",{"3":[true]}]')
    assert await next_text(ws) == "42" + prefix + '["message-back",1,"2",{"3":[true]}]'
    await ws.send_str("42" + prefix + '456["message-with-ack",1,"2",{"3":[false]}]')
    assert await next_text(ws) == "43" + prefix + '456[1,"2",{"3":[false]}]'
    await ws.close()


async def test_binary_message_back(profile, http):
    ws, _ = await sio_ws(http, profile)
    await next_text(ws)
    await next_text(ws)
    await ws.send_str('451-["message",{"_placeholder":true,"num":0}]')
    await ws.send_bytes(b"\x01\x02\x03")
    assert await next_text(ws) == '451-["message-back",{"_placeholder":true,"num":0}]'
    assert (await ws.receive(timeout=2)).data == b"\x01\x02\x03"
    await ws.close()


async def test_unknown_namespace_and_malformed_packets(profile, http):
    ws, _ = await sio_ws(http, profile, "/random")
    assert await next_text(ws) == '44/random,{"message":"Invalid namespace"}'
    await ws.close()
    for frame in ('42{}', "4abc", '42abc["x"]', "49"):
        ws = await http.ws_connect(url(profile, transport="websocket"))
        await ws.receive(timeout=2)
        if frame != "4abc":
            await ws.send_str("40")
            await next_text(ws)
            await next_text(ws)
        await ws.send_str(frame)
        msg = await ws.receive(timeout=2)
        while msg.type == aiohttp.WSMsgType.TEXT:  # anything still queued, then the close
            msg = await ws.receive(timeout=2)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING), frame
        await ws.close()


async def test_no_stray_noop_after_an_upgrade_without_pending_poll(profile, http):
    sid = (await handshake(http, profile, "engine.io"))["sid"]
    ws = await http.ws_connect(url(profile, "engine.io", transport="websocket", sid=sid))
    await ws.send_str("2probe")
    assert (await ws.receive(timeout=2)).data == "3probe"
    await ws.send_str("5")
    await ws.send_str("4first")
    assert (await ws.receive(timeout=2)).data == "4first"  # not a stray "6"
    await ws.close()


async def test_second_websocket_for_an_upgraded_session_is_accepted_then_closed(profile, http):
    # The reference server completes the handshake (101) and closes that WebSocket at once.
    sid = (await handshake(http, profile, "engine.io"))["sid"]
    ws = await http.ws_connect(url(profile, "engine.io", transport="websocket", sid=sid))
    await ws.send_str("2probe")
    assert (await ws.receive(timeout=2)).data == "3probe"
    await ws.send_str("5")
    second = await http.ws_connect(url(profile, "engine.io", transport="websocket", sid=sid))
    msg = await second.receive(timeout=2)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
    await second.close()
    await ws.send_str("4still here")  # the first WebSocket carries on
    assert await next_text(ws) == "4still here"
    await ws.close()


async def test_overlapping_polls_answer_the_first_with_close_alone(profile, http):
    sid = (await handshake(http, profile, "engine.io"))["sid"]
    first = asyncio.create_task(http.get(url(profile, "engine.io", transport="polling", sid=sid)))
    await asyncio.sleep(0.05)  # pending (the first ping is due after 300 ms)
    async with http.get(url(profile, "engine.io", transport="polling", sid=sid)) as r:
        assert r.status == 400
    response = await asyncio.wait_for(first, 2)
    assert response.status == 200 and (await response.text()) == "1"


@pytest.mark.parametrize("namespace", ["/", "/custom"])
async def test_connect_without_payload_hands_auth_as_empty_object(profile, http, namespace):
    ws, prefix = await sio_ws(http, profile, namespace)
    assert (await next_text(ws)).startswith("40" + prefix)
    assert await next_text(ws) == "42" + prefix + '["auth",{}]'
    await ws.close()
