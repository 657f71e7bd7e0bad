"""Connection state recovery with the official socket.io-client 4.8, unchanged.

The subscriber's TCP connection is cut by a proxy (no Socket.IO close handshake), events
flow while it is away, and it reconnects: every event must arrive exactly once, in order,
with ``socket.recovered`` true — over WebSocket and polling-only, on one node and on
another node sharing the Redis.
"""

from __future__ import annotations

import asyncio

import pytest


TRANSPORTS = {"websocket": ["websocket"], "polling": ["polling"]}


async def publish(js, name: str, room: str, texts: list[str]) -> None:
    for text in texts:
        ack = await js.emit(name, "message", {"room": room, "text": text})
        assert ack["ok"], ack


def received(events: list[dict]) -> tuple[list[str], list[str]]:
    texts = [e["args"][0]["text"] for e in events]
    offsets = [e["args"][-1] for e in events]
    return texts, offsets


def offset_key(offset: str) -> tuple[str, int]:
    """An offset string is "<offset>~<channel tag>": offsets increase within a channel."""
    offset, tag = offset.split("~")
    return tag, int(offset)


def assert_exactly_once_in_order(events: list[dict], expected: list[str]) -> None:
    texts, offsets = received(events)
    assert texts == expected
    keys = [offset_key(o) for o in offsets]
    assert keys == sorted(keys) and len(set(keys)) == len(keys), offsets


async def sub_and_pub(js, proxies, sub_server, pub_server=None, transports=("websocket",), **sub_opts):
    """A subscriber behind a proxy (so its link can be cut) and a publisher, both in room r."""
    proxy = await proxies([sub_server.port])
    first = await js.connect("sub", proxy.url + "/chat", transports=list(transports), **sub_opts)
    await js.connect("pub", (pub_server or sub_server).url + "/chat", transports=["websocket"])
    for name in ("sub", "pub"):
        assert (await js.emit(name, "join", {"room": "r"}))["ok"]
    return proxy, first


async def cut_and_publish(js, proxy, sub: str, pub: str, room: str, during: list[str]) -> None:
    proxy.down()
    await js.call("waitDisconnects", name=sub, count=1)
    await publish(js, pub, room, during)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_recovery_after_connection_cut(servers, js, proxies, redis_url, transport, store):
    env = {"PING_INTERVAL": "1", "PING_TIMEOUT": "1"}
    if store == "redis":
        env["REDIS_URL"] = redis_url
    srv = servers(env=env)
    proxy, sub = await sub_and_pub(js, proxies, srv, transports=TRANSPORTS[transport])

    await publish(js, "pub", "r", ["m1", "m2", "m3"])
    await js.wait("sub", "message", 3)
    await cut_and_publish(js, proxy, "sub", "pub", "r", [f"gap{i}" for i in range(10)])
    proxy.up()
    state = await js.call("waitConnects", name="sub", count=2)
    assert state["recovered"] is True, state
    assert state["sid"] == sub["sid"]
    await publish(js, "pub", "r", ["after1", "after2"])
    events = await js.wait("sub", "message", 15)
    await asyncio.sleep(0.3)  # anything extra (a duplicate) would arrive now
    events = await js.events("sub", "message")
    assert_exactly_once_in_order(events, ["m1", "m2", "m3", *[f"gap{i}" for i in range(10)], "after1", "after2"])


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_recovery_on_another_node(servers, js, proxies, redis_url, transport):
    env = {"REDIS_URL": redis_url, "PING_INTERVAL": "1", "PING_TIMEOUT": "1"}
    node1, node2 = servers(env=env), servers(env=env)
    proxy, sub = await sub_and_pub(js, proxies, node1, node2, transports=TRANSPORTS[transport])
    await publish(js, "pub", "r", ["a", "b"])
    await js.wait("sub", "message", 2)

    await cut_and_publish(js, proxy, "sub", "pub", "r", ["c", "d", "e"])
    proxy.up([node2.port])  # the client comes back through the balancer to the other node
    state = await js.call("waitConnects", name="sub", count=2)
    assert state["recovered"] is True, (state, node1.output()[-2000:], node2.output()[-2000:])
    assert state["sid"] == sub["sid"]
    await publish(js, "pub", "r", ["f"])
    await js.wait("sub", "message", 6)
    await asyncio.sleep(0.3)
    assert_exactly_once_in_order(await js.events("sub", "message"), ["a", "b", "c", "d", "e", "f"])


async def test_recovery_of_a_client_that_received_no_event_yet(servers, js, proxies):
    srv = servers()
    proxy = await proxies([srv.port])
    first = await js.connect("sub", proxy.url + "/chat", transports=["websocket"])
    await js.connect("pub", srv.url + "/chat", transports=["websocket"])
    me = await js.emit("sub", "whoami")
    assert (await js.events("sub")) == []
    # The JS client has a pid but no offset: Node's server would refuse to recover here.
    proxy.down()
    await js.call("waitDisconnects", name="sub", count=1)
    assert (await js.emit("pub", "dm", {"to": me["user"], "text": "while you were away"}))["ok"]
    proxy.up()
    state = await js.call("waitConnects", name="sub", count=2)
    assert state["recovered"] is True and state["sid"] == first["sid"]
    [event] = await js.wait("sub", "dm", 1)
    assert event["args"][0]["text"] == "while you were away"


async def test_recovering_twice_in_a_row(servers, js, proxies):
    srv = servers()
    proxy, _ = await sub_and_pub(js, proxies, srv)
    expected = []
    for round_ in range(3):
        await cut_and_publish(js, proxy, "sub", "pub", "r", [f"r{round_}"])
        expected.append(f"r{round_}")
        proxy.up()
        state = await js.call("waitConnects", name="sub", count=round_ + 2)
        assert state["recoveredHistory"][-1] is True, state
    events = await js.wait("sub", "message", 3)
    assert_exactly_once_in_order(events, expected)


async def test_expired_session_gets_a_new_one(servers, js, proxies):
    srv = servers(env={"MAX_DISCONNECTION_DURATION": "1"})
    proxy, first = await sub_and_pub(js, proxies, srv)
    await cut_and_publish(js, proxy, "sub", "pub", "r", ["lost"])
    await asyncio.sleep(1.5)
    proxy.up()
    state = await js.call("waitConnects", name="sub", count=2)
    assert state["recovered"] is False
    assert state["sid"] != first["sid"]
    # the application can still fetch what it missed from the room history
    await js.emit("sub", "join", {"room": "r"})
    history = await js.emit("sub", "history", {"room": "r", "limit": 10})
    assert [m["text"] for m in history["messages"]] == ["lost"]


async def test_epoch_change_makes_recovery_impossible(servers, js, proxies, own_redis):
    env = {"REDIS_URL": own_redis.url}
    srv = servers(env=env)
    proxy = await proxies([srv.port])
    first = await js.connect("sub", proxy.url + "/chat", transports=["websocket"])
    await js.emit("sub", "join", {"room": "r"})
    proxy.down()
    await js.call("waitDisconnects", name="sub", count=1)
    # Redis loses its data (the log, the epoch, the saved session) while the client is away.
    own_redis.cli("FLUSHALL")
    proxy.up()
    state = await js.call("waitConnects", name="sub", count=2)
    assert state["recovered"] is False and state["sid"] != first["sid"]


async def test_volatile_events_never_become_offsets(servers, js, proxies):
    srv = servers()
    proxy, _ = await sub_and_pub(js, proxies, srv)
    await publish(js, "pub", "r", ["durable"])
    await js.wait("sub", "message", 1)
    # typing is volatile; its payload ends in an object, but an app volatile emit ending in a
    # string must not be taken as an offset either (checked in test_delivery).
    await js.send("pub", "typing", {"room": "r", "typing": True})
    typing = await js.wait("sub", "typing", 1)
    assert not isinstance(typing[0]["args"][-1], str)
    await cut_and_publish(js, proxy, "sub", "pub", "r", ["missed"])
    proxy.up()
    state = await js.call("waitConnects", name="sub", count=2)
    assert state["recovered"] is True
    events = await js.wait("sub", "message", 2)
    assert [e["args"][0]["text"] for e in events] == ["durable", "missed"]


async def test_graceful_shutdown_lets_clients_recover_on_another_node(servers, js, redis_url):
    env = {"REDIS_URL": redis_url}
    node1, node2 = servers(env=env), servers(env=env)
    # the client knows both nodes: a stand-in for a load balancer that drops a stopped node
    await js.connect("sub", node1.url + "/chat", transports=["websocket"], reconnectionAttempts=50)
    await js.connect("pub", node2.url + "/chat", transports=["websocket"])
    for name in ("sub", "pub"):
        await js.emit(name, "join", {"room": "r"})
    await js.call("eval", code="""
        const s = ctx.sockets.get('sub').socket;
        s.io.on('reconnect_attempt', () => { s.io.uri = %r; s.io.engine && (s.io.opts.hostname = '127.0.0.1'); });
        return true;""" % (node2.url,))
    assert node1.terminate() == 0
    await js.call("waitDisconnects", name="sub", count=1)
    await publish(js, "pub", "r", ["while moving"])
    state = await js.call("waitConnects", name="sub", count=2)
    assert state["recovered"] is True, (state, node1.output()[-1500:])
    events = await js.wait("sub", "message", 1)
    assert [e["args"][0]["text"] for e in events] == ["while moving"]


async def test_a_node_shutting_down_without_redis_says_so_once_not_once_per_socket(servers, js, own_redis):
    """SIGTERM while Redis is away: no socket's session can be saved. The log says so in one
    warning (the rest counted as suppressed), not in one line per socket: a node with 10,000
    sockets wrote 10,000 lines."""
    node = servers(env={"REDIS_URL": own_redis.url})
    connected = (await js.call("eval", py_timeout=60, code=f"""
        const url = {node.url + '/chat'!r};
        const sockets = await Promise.all(Array.from({{length: 40}}, () => new Promise((resolve, reject) => {{
            const s = ctx.io(url, {{forceNew: true, transports: ['websocket'], reconnection: false}});
            s.once('connect', () => resolve(s));
            s.once('connect_error', reject);
        }})));
        globalThis.stranded = sockets;
        return sockets.filter((s) => s.connected).length;"""))["value"]
    assert connected == 40
    own_redis.stop()
    node.terminate()
    lines = [line for line in node.output().splitlines() if "could not save" in line]
    assert 1 <= len(lines) <= 2, lines[:5]
    await js.call("eval", code="globalThis.stranded.forEach((s) => s.close()); return true;")


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_recovery_after_a_polling_transport_error(servers, js, proxies, redis_url, store):
    """A polling request fails while the link stays up: socket.io-client closes its transport
    with an Engine.IO CLOSE (no namespace DISCONNECT) and reconnects. As in Node, that is the
    transport closing, not the client leaving: the session is recovered."""
    env = {"REDIS_URL": redis_url} if store == "redis" else {}
    srv = servers(env=env)
    proxy, sub = await sub_and_pub(js, proxies, srv, transports=["polling"])
    await publish(js, "pub", "r", ["m1"])
    await js.wait("sub", "message", 1)
    # The pending long-poll fails; new connections still get through.
    for _ in range(100):
        if proxy.cut():
            break
        await asyncio.sleep(0.02)  # between two polls: no request open yet
    else:
        raise AssertionError("no polling request to cut")
    await js.call("waitDisconnects", name="sub", count=1)
    await publish(js, "pub", "r", ["gap"])
    state = await js.call("waitConnects", name="sub", count=2)
    assert state["recovered"] is True, (state, srv.output()[-1500:])
    await publish(js, "pub", "r", ["after"])
    await js.wait("sub", "message", 3)
    await asyncio.sleep(0.3)
    assert_exactly_once_in_order(await js.events("sub", "message"), ["m1", "gap", "after"])


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_deliberate_disconnect_is_not_recoverable(server, js, transport):
    """socket.disconnect() sends the namespace DISCONNECT, then closes the transport: the session
    is gone, and its pid recovers nothing."""
    await js.connect("a", server.url + "/chat", transports=TRANSPORTS[transport])
    await js.connect("pub", server.url + "/chat", transports=["websocket"])
    for name in ("a", "pub"):
        assert (await js.emit(name, "join", {"room": "r"}))["ok"]
    await publish(js, "pub", "r", ["m1"])
    await js.wait("a", "message", 1)
    saved = (await js.call("eval", code="""
        const s = ctx.sockets.get('a').socket;
        const kept = {pid: s._pid, offset: s._lastOffset};
        s.disconnect();
        return kept;"""))["value"]
    assert saved["pid"] and saved["offset"]
    await asyncio.sleep(0.5)
    state = await js.connect("b", server.url + "/chat", transports=TRANSPORTS[transport], auth=saved)
    assert state["connected"] and state["recovered"] is False, state


def labelled(server, name: str, label: str) -> float:
    """The value of metric ``name`` with exactly ``label`` (e.g. 'reason="recovery"')."""
    _, body = server.get("/metrics")
    for line in body.splitlines():
        if line.startswith(f"{name}{{{label}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_a_socket_in_50_rooms_recovers_exactly_its_rooms_reading_only_its_channels(servers, js, proxies,
                                                                                          redis_url):
    node = servers(env={"REDIS_URL": redis_url, "EVENTS_PER_SECOND": "10000", "EVENT_BURST": "10000"})
    proxy = await proxies([node.port])
    await js.connect("sub", proxy.url + "/chat", transports=["websocket"])
    await js.connect("pub", node.url + "/chat", transports=["websocket"])
    mine, others = [f"in{i}" for i in range(50)], [f"out{i}" for i in range(20)]
    for room in mine:
        assert (await js.emit("sub", "join", {"room": room}))["ok"]
    for room in mine + others:
        assert (await js.emit("pub", "join", {"room": room}))["ok"]
    for room in mine + others:  # one message everywhere before the cut: seen live
        await publish(js, "pub", room, [f"{room}-before"])
    await js.wait("sub", "message", 50)
    proxy.down()
    await js.call("waitDisconnects", name="sub", count=1)
    for room in mine + others:
        await publish(js, "pub", room, [f"{room}-missed"])
    reads = labelled(node, "rt_channel_history_reads_total", 'reason="recovery"')
    proxy.up()
    state = await js.call("waitConnects", name="sub", count=2)
    assert state["recovered"] is True
    await js.wait("sub", "message", 100)
    await asyncio.sleep(0.5)  # a duplicate or a message of another room would arrive now
    texts = [e["args"][0]["text"] for e in await js.events("sub", "message")]
    assert sorted(texts) == sorted([f"{r}-before" for r in mine] + [f"{r}-missed" for r in mine])
    # one read per channel of the session: its 50 rooms, its own, its user's and the namespace's
    assert labelled(node, "rt_channel_history_reads_total", 'reason="recovery"') - reads == 53


async def test_a_cut_user_shows_as_away_then_back_or_gone(servers, js, proxies):
    node = servers(env={"MAX_DISCONNECTION_DURATION": "2", "PRESENCE_TTL": "0.6"})
    proxy = await proxies([node.port])
    await js.connect("a", node.url + "/chat", transports=["websocket"])
    await js.connect("b", proxy.url + "/chat", transports=["websocket"])
    for name in ("a", "b"):
        assert (await js.emit(name, "join", {"room": "r"}))["ok"]
    b = (await js.emit("b", "whoami"))["user"]

    async def actions() -> list[str]:
        return [e["args"][0]["action"] for e in await js.events("a", "presence") if e["args"][0]["user"] == b]

    seen = len(await actions())
    proxy.down()
    await js.call("waitDisconnects", name="b", count=1)
    await js.wait("a", "presence", seen + 2)  # b's join earlier, now its away
    assert (await actions())[-1] == "away"
    await asyncio.sleep(1.0)  # past the presence TTL: away is not a leave
    assert (await actions())[-1] == "away"
    assert b in [m["user"] for m in (await js.emit("a", "presence", {"room": "r"}))["members"]]
    proxy.up()
    assert (await js.call("waitConnects", name="b", count=2))["recovered"] is True
    for _ in range(50):
        if (await actions())[-1] == "join":
            break
        await asyncio.sleep(0.1)
    assert (await actions())[-2:] == ["away", "join"]  # back

    # gone for good: away, then a leave when the recovery window is over
    proxy.down()
    await js.call("waitDisconnects", name="b", count=2)
    await js.call("eval", code="ctx.sockets.get('b').socket.io.reconnection(false); return true;")
    for _ in range(60):
        if (await actions())[-1] == "leave":
            break
        await asyncio.sleep(0.1)
    assert (await actions())[-2:] == ["away", "leave"]
    assert b not in [m["user"] for m in (await js.emit("a", "presence", {"room": "r"}))["members"]]
