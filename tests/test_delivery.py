"""Delivery guarantees beyond recovery: client event IDs with socket.io-client retries,
resume by offset for clients without recovery, direct messages retried until acknowledged,
recovery after a node is killed."""

from __future__ import annotations

import asyncio

import socketio

from test_recovery import assert_exactly_once_in_order, publish, sub_and_pub


def metric(server, name: str) -> float:
    _, body = server.get("/metrics")
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_duplicate_event_ids_are_applied_once_with_the_same_ack(server, js):
    await js.connect("a", server.url + "/chat", transports=["websocket"])
    await js.connect("b", server.url + "/chat", transports=["websocket"])
    for name in ("a", "b"):
        await js.emit(name, "join", {"room": "r"})
    first = await js.emit("a", "message", {"room": "r", "text": "once", "eventId": "evt-1"})
    again = await js.emit("a", "message", {"room": "r", "text": "once", "eventId": "evt-1"})
    assert first["ok"] and again == first
    other = await js.emit("a", "message", {"room": "r", "text": "twice", "eventId": "evt-2"})
    assert other["id"] != first["id"]
    await js.wait("b", "message", 2)
    await asyncio.sleep(0.3)
    assert [e["args"][0]["text"] for e in await js.events("b", "message")] == ["once", "twice"]
    assert metric(server, "rt_dedupe_hits_total") == 1
    bad = await js.emit("a", "message", {"room": "r", "text": "x", "eventId": "no spaces allowed"})
    assert bad["ok"] is False and bad["error"]["code"] == "invalid_event_id"


async def test_js_client_retries_become_effectively_once(server, js, proxies):
    proxy = await proxies([server.port])
    await js.connect("a", proxy.url + "/chat", transports=["websocket"], retries=5, ackTimeout=300)
    await js.connect("b", server.url + "/chat", transports=["websocket"])
    for name in ("a", "b"):
        assert (await js.emit(name, "join", {"room": "r"}))["ok"]
    # Acks are lost on the way back: the client's ackTimeout fires and it re-sends the same
    # packet (same eventId) until an ack gets through.
    proxy.freeze()
    await js.call("eval", code="""
        const s = ctx.sockets.get('a').socket;
        globalThis.retryResult = s.emitWithAck('message', {room: 'r', text: 'retried', eventId: 'retry-1'});
        return true;""")
    await asyncio.sleep(1.2)
    proxy.thaw()
    result = (await js.call("eval", code="return await globalThis.retryResult;"))["value"]
    assert result["ok"] is True
    await js.wait("b", "message", 1)
    await asyncio.sleep(0.3)
    assert [e["args"][0]["text"] for e in await js.events("b", "message")] == ["retried"]
    assert metric(server, "rt_dedupe_hits_total") >= 1  # the retries really reached the server


async def test_client_without_recovery_resumes_by_seq(server, js):
    """python-socketio's client has no connection state recovery, like the Java and Swift clients."""
    await js.connect("pub", server.url + "/chat", transports=["websocket"])
    await js.emit("pub", "join", {"room": "r"})
    got: list[dict] = []
    client = socketio.AsyncClient()
    client.on("message", lambda msg, offset: got.append(msg), namespace="/chat")
    await client.connect(server.url, namespaces=["/chat"], transports=["websocket"])
    joined = await client.call("join", {"room": "r"}, namespace="/chat")
    await publish(js, "pub", "r", ["one", "two"])
    for _ in range(100):
        if len(got) == 2:
            break
        await asyncio.sleep(0.02)
    last_seq, epoch = got[-1]["seq"], joined["epoch"]
    await client.disconnect()

    await publish(js, "pub", "r", ["three", "four", "five"])
    client = socketio.AsyncClient()
    await client.connect(server.url, namespaces=["/chat"], transports=["polling"])
    resumed = await client.call("resume", {"rooms": {"r": {"seq": last_seq, "epoch": epoch}}}, namespace="/chat")
    assert resumed.get("ok"), resumed
    room = resumed["rooms"]["r"]
    assert room["complete"] is True
    assert [m["text"] for m in room["messages"]] == ["three", "four", "five"]
    # a position from another epoch cannot be resumed from: the client is told, not misled
    stale = await client.call("resume", {"rooms": {"r": {"seq": last_seq, "epoch": "other"}}}, namespace="/chat")
    assert stale["rooms"]["r"]["complete"] is False and stale["rooms"]["r"]["messages"] == []
    bad = await client.call("resume", {"rooms": {"r": {"seq": "yesterday"}}}, namespace="/chat")
    assert bad["ok"] is False and bad["error"]["code"] == "invalid_offset"
    await client.disconnect()


async def test_resume_in_the_connect_auth(server, js):
    await js.connect("pub", server.url + "/chat", transports=["websocket"])
    joined = await js.emit("pub", "join", {"room": "r"})
    first = await js.emit("pub", "message", {"room": "r", "text": "seen"})
    await publish(js, "pub", "r", ["missed 1", "missed 2"])
    await js.connect("late", server.url + "/chat", transports=["polling"],
                     auth={"resume": {"r": {"seq": first["seq"], "epoch": joined["epoch"]}}})
    [resumed] = await js.wait("late", "resumed", 1)
    assert resumed["args"][0]["rooms"]["r"]["complete"] is True
    messages = await js.events("late", "message")
    assert [m["args"][0]["text"] for m in messages] == ["missed 1", "missed 2"]
    # and it is in the room now: live messages follow
    await publish(js, "pub", "r", ["live"])
    await js.wait("late", "message", 3)


async def test_direct_messages_are_retried_until_acked_even_after_the_sender_node_dies(servers, js, redis_url):
    env = {"REDIS_URL": redis_url}
    retry = {**env, "DIRECT_RETRY_INTERVAL": "0.3"}
    sender_node = servers(env=env)
    receiver_node = servers(env=retry)
    await js.connect("bob", receiver_node.url + "/chat", transports=["websocket"])
    bob = (await js.emit("bob", "whoami"))["user"]
    await js.connect("alice", sender_node.url + "/chat", transports=["websocket"])
    sent = await js.emit("alice", "dm", {"to": bob, "text": "psst"})
    assert sent["ok"]
    sender_node.kill()  # kill -9: the node that sent the message is gone
    # bob does not ack: the message keeps coming, always with the same id
    events = await js.wait("bob", "dm", 3, timeout=8000)
    assert {e["args"][0]["id"] for e in events} == {sent["id"]}
    ack = await js.emit("bob", "dm_ack", {"ids": [sent["id"]]})
    assert ack == {"ok": True, "acked": 1}
    await asyncio.sleep(0.5)
    count = len(await js.events("bob", "dm"))
    await asyncio.sleep(1.0)
    assert len(await js.events("bob", "dm")) == count  # no more retries after the ack


async def test_clients_of_a_killed_node_recover_on_another(servers, js, proxies, redis_url):
    env = {"REDIS_URL": redis_url}
    node1, node2 = servers(env=env), servers(env=env)
    proxy, first = await sub_and_pub(js, proxies, node1, node2)
    await publish(js, "pub", "r", ["before"])
    await js.wait("sub", "message", 1)
    node1.kill()
    await js.call("waitDisconnects", name="sub", count=1)
    await publish(js, "pub", "r", ["while dead 1", "while dead 2"])
    proxy.up([node2.port])
    state = await js.call("waitConnects", name="sub", count=2)
    assert state["recovered"] is True and state["sid"] == first["sid"]
    await js.wait("sub", "message", 3)
    await asyncio.sleep(0.3)
    assert_exactly_once_in_order(await js.events("sub", "message"), ["before", "while dead 1", "while dead 2"])


async def test_polling_through_a_proxy_that_refuses_websocket(server, js, proxies):
    proxy = await proxies([server.port], refuse_websocket=True)
    # default transports: the client tries to upgrade, the proxy refuses, polling carries on
    state = await js.connect("p", proxy.url + "/chat")
    await js.connect("w", server.url + "/chat", transports=["websocket"])
    for name in ("p", "w"):
        assert (await js.emit(name, "join", {"room": "r"}))["ok"]
    await publish(js, "w", "r", [f"m{i}" for i in range(20)])
    events = await js.wait("p", "message", 20)
    assert [e["args"][0]["text"] for e in events] == [f"m{i}" for i in range(20)]
    await asyncio.sleep(0.5)
    assert (await js.state("p"))["transport"] == "polling"
    assert proxy.websocket_refusals >= 1
    assert state["connected"]
