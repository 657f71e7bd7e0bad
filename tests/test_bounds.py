"""Memory and store bounds (issue 12): what a client can make the server hold is bounded in
bytes and in age, per connection and per store, whatever the path and whether or not anyone
reads or is online. Each test drives a real server process and reads its resident memory
(/proc/<pid>/status) or its stores (Redis DBSIZE, the internal-table gauges on /metrics)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from pathlib import Path

import aiohttp
import pytest

from server.config import ConfigError, load_config
from test_delivery import metric
from test_hostile import _cfg, bystander, bystander_still_fine, internal
from test_recovery import publish, sub_and_pub

FAST = {"EVENTS_PER_SECOND": "100000", "EVENT_BURST": "100000"}


def rss_mb(server) -> float:
    """The server process's resident memory in MiB."""
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS line")


def ws_frame(text: str) -> bytes:
    """A masked client-to-server WebSocket text frame."""
    data = text.encode()
    mask = b"\x01\x02\x03\x04"
    n = len(data)
    header = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    return header + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(data))


def deaf_client(server, namespace: str = "/chat") -> socket.socket:
    """A WebSocket client that joins ``namespace`` and then never reads (tiny receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall((f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                  "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    sock.recv(4096)
    sock.sendall(ws_frame(f"40{namespace},"))
    return sock


def cut_off(sock: socket.socket, seconds: float = 10.0) -> bool:
    """True when the server has dropped the connection: what it had sent, then EOF or a reset."""
    sock.settimeout(seconds)
    try:
        while sock.recv(1 << 20):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    except TimeoutError:
        return False
    return True


async def fill_room(js, name: str, room: str, count: int, size: int = 3900) -> None:
    """``count`` messages of ``size`` characters in ``room``, sent by ``name``."""
    await js.emit(name, "join", {"room": room})
    text = "x" * size
    for start in range(0, count, 50):
        results = (await js.call("emitMany", name=name, event="message",
                                 argsList=[[{"room": room, "text": f"{start + k} {text}"}]
                                           for k in range(min(50, count - start))]))["results"]
        assert all(r["ok"] for r in results), results[0]


# ---------------------------------------------------------------------- the send queue, in bytes


async def test_non_reading_client_asking_for_large_replies_is_cut_and_memory_stays_bounded(servers, js):
    srv = servers(env=FAST)
    await bystander(js, srv)
    await js.connect("pub", srv.url + "/chat", transports=["websocket"])
    await fill_room(js, "pub", "big", 250)  # a resume of it is ~1 MB
    await asyncio.sleep(0.5)
    before = rss_mb(srv)
    sock = deaf_client(srv)
    request = '42/chat,{}["resume",{{"rooms":{{"big":{{"seq":0}}}}}}]'
    sock.sendall(b"".join(ws_frame(request.format(i)) for i in range(100)))  # ~100 MB of replies
    await asyncio.sleep(3)
    grown = rss_mb(srv) - before
    # default limits.send_queue_max_bytes (4 MiB) plus what is in flight, not 100 MB
    assert grown < 50, f"server grew by {grown:.0f} MiB for a client that does not read"
    assert cut_off(sock), "the non-reading client was not disconnected"
    sock.close()
    assert metric(srv, "rt_slow_consumers_total") >= 1
    await bystander_still_fine(js, srv)


async def test_polling_client_that_never_polls_is_cut_by_bytes(servers, js):
    """The byte bound covers a long-polling session's queue too (no TCP buffer there)."""
    srv = servers(env=FAST, args=["--config", _cfg("[limits]\nsend_queue_max_bytes = 1048576\n")])
    await bystander(js, srv)
    await js.connect("pub", srv.url + "/chat", transports=["websocket"])
    await fill_room(js, "pub", "big", 100)  # ~400 KB per resume
    async with aiohttp.ClientSession() as http:
        base = f"{srv.url}/socket.io/?EIO=4&transport=polling"
        async with http.get(base) as r:
            sid = json.loads((await r.text())[1:])["sid"]
        url = f"{base}&sid={sid}"
        async with http.post(url, data="40/chat,") as r:
            assert r.status == 200
        body = "\x1e".join(f'42/chat,{i}["resume",{{"rooms":{{"big":{{"seq":0}}}}}}]' for i in range(10))
        async with http.post(url, data=body) as r:
            assert r.status == 200
        await asyncio.sleep(1)
        assert metric(srv, "rt_slow_consumers_total") >= 1
    await bystander_still_fine(js, srv)


async def test_a_resume_reply_stays_within_the_byte_bound_and_pages(servers, js):
    """One reply bigger than send_queue_max_bytes would still go out (nothing else waiting), so
    a deaf client per connection could pin a whole room's history: resume answers at most half
    the bound, with ``more`` (and ``complete`` false); resuming from the last seq gets the rest."""
    srv = servers(env=FAST, args=["--config", _cfg("[limits]\nsend_queue_max_bytes = 262144\n")])
    await js.connect("pub", srv.url + "/chat", transports=["websocket"])
    await fill_room(js, "pub", "big", 250)  # ~1 MB
    await js.connect("late", srv.url + "/chat", transports=["websocket"])
    seq, texts, replies = 0, [], 0
    while True:
        reply = (await js.emit("late", "resume", {"rooms": {"big": {"seq": seq}}}))["rooms"]["big"]
        replies += 1
        texts += [m["text"] for m in reply["messages"]]
        if not reply.get("more"):
            break
        assert reply["complete"] is False and reply["messages"]
        assert sum(len(m["text"]) for m in reply["messages"]) <= 131072
        seq = reply["messages"][-1]["seq"]
    assert reply["complete"] is True
    assert [t.split()[0] for t in texts] == [str(i) for i in range(250)]
    assert replies > 1


async def test_recovery_larger_than_the_byte_bound_is_refused_not_cut_again_and_again(servers, js, proxies):
    """A replay of what a client missed goes out at once, before the CONNECT reply: one over
    send_queue_max_bytes would cut the client on every reconnect. It gets a new session instead
    (socket.recovered false) and fetches the room history, as after any failed recovery."""
    srv = servers(env=FAST, args=["--config", _cfg("[limits]\nsend_queue_max_bytes = 65536\n")])
    proxy, first = await sub_and_pub(js, proxies, srv)
    await publish(js, "pub", "r", ["seen"])
    await js.wait("sub", "message", 1)
    proxy.down()
    await js.call("waitDisconnects", name="sub", count=1)
    await fill_room(js, "pub", "r", 600)  # ~2.4 MB missed
    proxy.up()
    state = await js.call("waitConnects", name="sub", count=2)
    assert state["recovered"] is False and state["sid"] != first["sid"]
    assert (await js.emit("sub", "join", {"room": "r"}))["ok"]
    await publish(js, "pub", "r", ["live"])
    events = await js.wait("sub", "message", 2)
    assert events[-1]["args"][0]["text"] == "live"


# ---------------------------------------------------------------------- the event cap, attachments included


async def test_binary_event_over_the_cap_is_refused(servers, js):
    srv = servers()  # max_event_bytes 64 KiB
    await js.connect("a", srv.url + "/collab", transports=["websocket"])
    await js.emit("a", "open", {"doc": "d"})
    big = (await js.call("eval", code="""
        const Y = ctx.require('yjs'); const doc = new Y.Doc(); doc.getText('t').insert(0, 'x'.repeat(200000));
        return Y.encodeStateAsUpdate(doc);"""))["value"]
    ack = await js.emit("a", "update", {"doc": "d", "update": big})
    assert ack["ok"] is False and ack["error"]["code"] == "payload_too_large", ack
    small = (await js.call("eval", code="""
        const Y = ctx.require('yjs'); const doc = new Y.Doc(); doc.getText('t').insert(0, 'x');
        return Y.encodeStateAsUpdate(doc);"""))["value"]
    assert (await js.emit("a", "update", {"doc": "d", "update": small}))["ok"]
    assert (await js.state("a"))["connects"] == 1


async def test_attachments_are_counted_together_against_the_event_cap(servers, js):
    srv = servers()
    await bystander(js, srv)
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{srv.url}/socket.io/?EIO=4&transport=websocket")
        await ws.receive(timeout=5)
        await ws.send_str("40/chat,")
        await ws.receive(timeout=5)
        placeholders = ",".join(f'{{"_placeholder":true,"num":{i}}}' for i in range(10))
        await ws.send_str(f'4510-/chat,7["message",{placeholders}]')
        for _ in range(10):  # each under the cap, together 500 KB
            await ws.send_bytes(b"\x00" * 50_000)
        while True:
            msg = await ws.receive(timeout=5)
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            if msg.data.startswith("43/chat,7"):
                break
        ack = json.loads(msg.data[len("43/chat,7"):])[0]
        assert ack["ok"] is False and ack["error"]["code"] == "payload_too_large", ack
        await ws.send_str('42/chat,8["whoami"]')  # the connection carries on
        msg = await ws.receive(timeout=5)
        assert msg.data.startswith("43/chat,8") and json.loads(msg.data[9:])[0]["ok"]
        await ws.close()
    await bystander_still_fine(js, srv)


async def test_unfinished_binary_packets_do_not_pin_memory(servers, js):
    srv = servers()
    await bystander(js, srv)
    await asyncio.sleep(0.3)
    before = rss_mb(srv)
    placeholders = ",".join(f'{{"_placeholder":true,"num":{i}}}' for i in range(10))
    blob = b"\x00" * 900_000
    async with aiohttp.ClientSession() as http:
        sockets = []
        for _ in range(20):
            ws = await http.ws_connect(f"{srv.url}/socket.io/?EIO=4&transport=websocket", max_msg_size=0)
            await ws.receive(timeout=5)
            await ws.send_str("40/chat,")
            await ws.receive(timeout=5)
            await ws.send_str(f'4510-/chat,["message",{placeholders}]')
            for _ in range(9):  # one attachment short: never finished
                await ws.send_bytes(blob)
            sockets.append(ws)
        await asyncio.sleep(1)  # well within attachment_timeout (10 s)
        grown = rss_mb(srv) - before
        assert grown < 40, f"20 unfinished binary packets hold {grown:.0f} MiB"
        for ws in sockets:
            await ws.close()
    await bystander_still_fine(js, srv)


# ---------------------------------------------------------------------- stores


async def test_dedupe_store_keeps_no_large_replies(servers, js):
    srv = servers(env=FAST)
    await js.connect("a", srv.url + "/chat", transports=["websocket"])
    await fill_room(js, "a", "big", 200)
    first = await js.emit("a", "history", {"room": "big", "limit": 200, "eventId": "h-0"})
    assert first["ok"] and len(first["messages"]) == 200
    again = await js.emit("a", "history", {"room": "big", "limit": 200, "eventId": "h-0"})
    assert again["ok"] is False and again["error"]["code"] == "reply_too_large", again
    # small replies are still replayed as they were
    sent = await js.emit("a", "message", {"room": "big", "text": "once", "eventId": "m-1"})
    assert await js.emit("a", "message", {"room": "big", "text": "once", "eventId": "m-1"}) == sent
    await asyncio.sleep(0.3)
    before = rss_mb(srv)
    for start in range(1, 91, 3):  # (90 replies of 800 KB at once would be over send_queue_max_bytes)
        results = (await js.call("emitMany", name="a", event="history",
                                 argsList=[[{"room": "big", "limit": 200, "eventId": f"h-{i}"}]
                                           for i in range(start, start + 3)]))["results"]
        assert all(r["ok"] for r in results)
    await asyncio.sleep(0.5)
    grown = rss_mb(srv) - before
    assert grown < 30, f"90 history replies remembered for dedupe hold {grown:.0f} MiB"


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_reading_unused_rooms_leaves_nothing_behind(servers, js, redis_url, redis_server, store):
    srv = servers(env={**FAST, **({"REDIS_URL": redis_url} if store == "redis" else {})})
    await js.connect("a", srv.url + "/chat", transports=["websocket"])
    await js.emit("a", "join", {"room": "used"})
    await js.emit("a", "message", {"room": "used", "text": "hello"})
    await asyncio.sleep(0.3)

    def held() -> float:
        return float(redis_server.cli("DBSIZE")) if store == "redis" else internal(srv)["channels"]

    before = held()
    results = []
    for start in range(0, 300, 25):  # in batches: 100 at once would exhaust the Redis pool (100 connections)
        results += (await js.call("emitMany", name="a", event="history",
                                  argsList=[[{"room": f"unused-{i}", "after": 0}] for i in range(start, start + 25)]
                                  + [[{"room": f"unused-{i}"}] for i in range(start, start + 25)]))["results"]
    assert all(r["ok"] and r["messages"] == [] and r["complete"] for r in results), [r for r in results if not r.get("complete")][:2]
    assert held() == before


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_log_max_age_trims_room_history_on_a_timer(servers, js, redis_url, store):
    env = {"REDIS_URL": redis_url} if store == "redis" else {}
    srv = servers(env=env, args=["--config", _cfg("[delivery]\nlog_max_age = 1\n")])
    await js.connect("a", srv.url + "/chat", transports=["websocket"])
    await js.emit("a", "join", {"room": "r"})
    sent = await js.emit("a", "message", {"room": "r", "text": "old news"})
    assert len((await js.emit("a", "history", {"room": "r"}))["messages"]) == 1
    for _ in range(50):
        await asyncio.sleep(0.1)
        if not (await js.emit("a", "history", {"room": "r"}))["messages"]:
            break
    else:
        raise AssertionError("a message older than log_max_age is still in the room's history")
    # the room's channel is gone with its last message, and its epoch with it
    assert (await js.emit("a", "history", {"room": "r", "after": 0, "epoch": sent["epoch"]}))["complete"] is False


async def test_direct_messages_to_absent_users_expire_and_are_bounded(servers, js):
    srv = servers(args=["--config", _cfg("[delivery]\ndirect_ttl = 1\ndirect_max_pending = 3\n")])
    await js.connect("a", srv.url + "/chat", transports=["websocket"])
    for i in range(3):
        assert (await js.emit("a", "dm", {"to": "nobody", "text": f"hi {i}"}))["ok"]
    full = await js.emit("a", "dm", {"to": "nobody", "text": "one too many"})
    assert full["ok"] is False and full["error"]["code"] == "too_many_pending", full
    assert internal(srv)["pending_messages"] == 3
    for _ in range(50):  # nobody ever comes online: they go after direct_ttl all the same
        await asyncio.sleep(0.1)
        if internal(srv)["pending_messages"] == 0:
            break
    assert internal(srv)["pending_messages"] == 0
    assert (await js.emit("a", "dm", {"to": "nobody", "text": "room again"}))["ok"]


@pytest.mark.parametrize("text,fragment", [
    ("[delivery]\nlog_idle_ttl = 3600\n", "delivery.log_idle_ttl"),  # gone: a channel lives log_max_age
    ("[limits]\nsend_queue_max_bytes = 1000\n", "limits.send_queue_max_bytes (from"),
    ("[delivery]\ndedupe_max_reply_bytes = \"big\"\n", "delivery.dedupe_max_reply_bytes (from"),
    ("[delivery]\ndirect_max_pending = 0\n", "delivery.direct_max_pending (from"),
])
def test_bound_keys_are_validated(text, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_config(_cfg(text), {})
