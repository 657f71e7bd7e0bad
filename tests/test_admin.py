"""Operators: /admin (the Admin UI protocol, cluster-wide), operator commands, metrics."""

from __future__ import annotations

import asyncio
import os

import pytest

from test_delivery import metric
from test_recovery import assert_exactly_once_in_order, publish, sub_and_pub

ADMIN = {"username": "admin", "password": "operator-pass-1"}
ENV = {"ADMIN_PASSWORD": ADMIN["password"]}


@pytest.fixture
def two_nodes(servers, redis_url):
    env = {**ENV, "REDIS_URL": redis_url}
    return servers(env=env), servers(env=env)


async def admin(js, name, node, auth=ADMIN, **opts):
    return await js.connect(name, node.url + "/admin", transports=["websocket"], auth=auth, **opts)


async def test_admin_authentication(servers, js):
    srv = servers(env=ENV)
    refused = await admin(js, "nobody", srv, auth={}, expect_error=True)
    assert refused["errors"][0]["message"] == "invalid credentials"
    wrong = await admin(js, "wrong", srv, auth={"username": "admin", "password": "nope"}, expect_error=True)
    assert wrong["errors"][0]["message"] == "invalid credentials"
    ok = await admin(js, "op", srv)
    assert ok["connected"]
    [session] = await js.wait("op", "session", 1)
    # a reloaded UI page presents the session id instead of the password
    again = await admin(js, "op2", srv, auth={"sessionId": session["args"][0]})
    assert again["connected"]
    bogus = await admin(js, "op3", srv, auth={"sessionId": "made-up"}, expect_error=True)
    assert bogus["errors"][0]["message"] == "invalid credentials"


async def test_admin_disabled_without_a_password(server, js):
    state = await admin(js, "op", server, expect_error=True)
    assert state["errors"][0]["message"] == "invalid credentials"


async def test_all_sockets_and_stats_cover_every_node(two_nodes, js):
    n1, n2 = two_nodes
    await js.connect("u1", n1.url + "/chat", transports=["websocket"])
    await js.connect("u2", n2.url + "/chat", transports=["polling"])
    await admin(js, "op", n1)
    [sockets] = await js.wait("op", "all_sockets", 1)
    listed = sockets["args"][0]
    assert sorted(s["node"] for s in listed) == sorted([f"node-{n1.port}", f"node-{n2.port}"])
    assert {s["transport"] for s in listed} == {"websocket", "polling"}
    assert all(s["data"]["user"].startswith("guest-") for s in listed)
    # server_stats arrive from both nodes, with distinct server ids
    for _ in range(60):
        ids = {e["args"][0]["serverId"] for e in await js.events("op", "server_stats")}
        if len(ids) == 2:
            break
        await asyncio.sleep(0.1)
    assert ids == {f"node-{n1.port}", f"node-{n2.port}"}
    # a socket connecting later, on the other node, is announced live
    await js.connect("u3", n2.url + "/chat", transports=["websocket"])
    [connected] = await js.wait("op", "socket_connected", 1)
    assert connected["args"][0]["node"] == f"node-{n2.port}"
    await js.call("close", name="u3")
    [gone] = await js.wait("op", "socket_disconnected", 1)
    assert gone["args"][0] == "/chat" and gone["args"][2] == "client disconnect"


async def test_ui_commands_act_on_every_node(two_nodes, js):
    n1, n2 = two_nodes
    await js.connect("u1", n1.url + "/chat", transports=["websocket"])
    await js.connect("u2", n2.url + "/chat", transports=["websocket"])
    await admin(js, "op", n1)
    # join: every /chat socket, on both nodes, joins room "ops"
    ack = await js.emit("op", "join", "/chat", "room:ops", None)
    assert ack == {"ok": True, "count": 2}
    await js.emit("u1", "message", {"room": "ops", "text": "via admin join"})
    [got] = await js.wait("u2", "message", 1)
    assert got["args"][0]["text"] == "via admin join"
    # emit to a room, from the UI
    await js.emit("op", "emit", "/chat", "room:ops", "notice", {"hello": "all"})
    for name in ("u1", "u2"):
        [notice] = await js.wait(name, "notice", 1)
        assert notice["args"][0] == {"hello": "all"}
    # leave, then disconnect the socket on the other node by id
    u2_sid = (await js.state("u2"))["sid"]
    assert (await js.emit("op", "leave", "/chat", "room:ops", u2_sid))["count"] == 1
    assert (await js.emit("op", "_disconnect", "/chat", False, u2_sid))["count"] == 1
    state = await js.call("waitDisconnects", name="u2", count=1)
    assert state["disconnects"] == ["io server disconnect"]
    assert (await js.state("u1"))["connected"]


async def test_read_only_operator_sees_but_cannot_change(servers, js):
    srv = servers(env={**ENV, "ADMIN_USERNAME": "admin"})
    # the read-only operator comes from the config file
    import tempfile

    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write('[admin]\nreadonly_username = "viewer"\nreadonly_password = "look-only-pass"\n')
    cfg.close()
    ro = servers(env=ENV, args=["--config", cfg.name])
    await js.connect("u", ro.url + "/chat", transports=["websocket"])
    await admin(js, "viewer", ro, auth={"username": "viewer", "password": "look-only-pass"})
    [config] = await js.wait("viewer", "config", 1)
    assert "EMIT" not in config["args"][0]["supportedFeatures"]
    for args in (("emit", "/chat", None, "x"), ("join", "/chat", "r", None), ("leave", "/chat", "r", None),
                 ("_disconnect", "/chat", False, None)):
        ack = await js.emit("viewer", *args)
        assert ack["ok"] is False and ack["error"]["code"] == "forbidden", args
    for event, payload in (("drain", {"node": "x"}), ("revoke", {"user": "x"}), ("announce", {}),
                           ("disconnect_user", {"user": "x"})):
        ack = await js.emit("viewer", event, payload)
        assert ack["error"]["code"] == "forbidden", event
    assert (await js.state("u"))["connected"]
    # it can read
    assert (await js.emit("viewer", "nodes"))["ok"]
    assert len((await js.emit("viewer", "sockets", {"namespace": "/chat"}))["sockets"]) == 1
    os.unlink(cfg.name)
    assert srv


async def test_operator_commands(two_nodes, js):
    n1, n2 = two_nodes
    await admin(js, "op", n1)
    nodes = (await js.emit("op", "nodes"))["nodes"]
    assert [n["node"] for n in nodes] == sorted([f"node-{n1.port}", f"node-{n2.port}"])
    assert all(n["version"] and "connections" in n for n in nodes)

    await js.connect("alice", n1.url + "/chat", transports=["websocket"])
    alice = await js.emit("alice", "whoami")  # a guest keeps its id, on any node, by its guest token
    await js.connect("alice2", n2.url + "/game", transports=["polling"], auth={"guestToken": alice["guestToken"]})
    await js.connect("bob", n2.url + "/chat", transports=["websocket"])
    await js.emit("bob", "join", {"room": "hall"})
    await js.emit("alice", "join", {"room": "hall"})
    await js.emit("bob", "message", {"room": "hall", "text": "hello hall"})

    room = await js.emit("op", "room", {"room": "hall"})
    assert [m["text"] for m in room["messages"]] == ["hello hall"]
    assert len(room["members"]) == 2

    assert (await js.emit("op", "announce", {"namespace": "/chat", "message": "maintenance at 5"}))["ok"]
    for name in ("alice", "bob"):
        [a] = await js.wait(name, "announcement", 1)
        assert a["args"][0]["message"] == "maintenance at 5"

    kicked = await js.emit("op", "disconnect_user", {"user": alice["user"]})
    assert kicked == {"ok": True, "count": 2}
    for name in ("alice", "alice2"):
        state = await js.call("waitDisconnects", name=name, count=1)
        assert state["disconnects"] == ["io server disconnect"]
    assert (await js.state("bob"))["connected"]

    bad = await js.emit("op", "announce", {"namespace": "/admin", "message": "x"})
    assert bad["error"]["code"] == "invalid_namespace"
    assert (await js.emit("op", "drain", {"node": "ghost"}))["error"]["code"] == "no_such_node"


async def test_revoked_tokens_stop_working_everywhere(servers, js, redis_url, tmp_path):
    import time

    import jwt

    secret = "an-hmac-secret-of-at-least-32-bytes!!"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[auth]\nrequired = ["/chat"]\nkeys = [{{ kid = "k1", algorithm = "HS256", key = "{secret}" }}]\n')
    env = {**ENV, "REDIS_URL": redis_url}
    n1 = servers(env=env, args=["--config", str(cfg)])
    n2 = servers(env=env, args=["--config", str(cfg)])
    token = jwt.encode({"sub": "carol", "exp": time.time() + 600, "iat": time.time() - 1}, secret,
                       headers={"kid": "k1"})
    await js.connect("carol", n2.url + "/chat", transports=["websocket"], auth={"token": token})
    await admin(js, "op", n1)
    assert (await js.emit("op", "revoke", {"user": "carol"}))["count"] == 1
    await js.call("waitDisconnects", name="carol", count=1)
    again = await js.connect("carol-again", n2.url + "/chat", transports=["websocket"], auth={"token": token},
                             expect_error=True)
    assert again["errors"][0]["data"]["code"] == "token_revoked"


async def test_drain_moves_clients_to_the_other_node_without_loss(two_nodes, js, proxies):
    n1, n2 = two_nodes
    # a balancer that sends new connections to whichever node is up: n1 first, then n2
    proxy, _ = await sub_and_pub(js, proxies, n1, n2)
    await publish(js, "pub", "r", ["before drain"])
    await admin(js, "op", n2)
    proxy.up([n2.port])
    drained = await js.emit("op", "drain", {"node": f"node-{n1.port}"})
    assert drained["ok"] and drained["moved"] >= 1
    await publish(js, "pub", "r", ["during drain"])
    state = await js.call("waitConnects", name="sub", count=2)
    assert state["recovered"] is True
    await publish(js, "pub", "r", ["after drain"])
    await js.wait("sub", "message", 3)
    assert_exactly_once_in_order(await js.events("sub", "message"), ["before drain", "during drain", "after drain"])
    assert n1.proc.wait(10) == 0  # the drained node exited by itself, cleanly


async def test_metrics_move_with_traffic(server, js):
    before = {name: metric(server, name) for name in ("rt_events_in_total", "rt_deliveries_total",
                                                      "rt_events_logged_total", "rt_connects_total")}
    await js.connect("a", server.url + "/chat", transports=["websocket"])
    await js.connect("b", server.url + "/chat", transports=["polling"])
    for name in ("a", "b"):
        await js.emit(name, "join", {"room": "r"})
    await publish(js, "a", "r", ["x", "y"])
    await js.emit("a", "message", {"room": "r", "text": "dup", "eventId": "m-1"})
    await js.emit("a", "message", {"room": "r", "text": "dup", "eventId": "m-1"})
    await js.wait("b", "message", 3)
    _, body = server.get("/metrics")
    assert 'rt_connections{namespace="/chat",transport="websocket"} 1.0' in body
    assert 'rt_connections{namespace="/chat",transport="polling"} 1.0' in body
    assert metric(server, "rt_events_in_total") >= before["rt_events_in_total"] + 6
    assert metric(server, "rt_deliveries_total") >= before["rt_deliveries_total"] + 6
    assert metric(server, "rt_events_logged_total") >= before["rt_events_logged_total"] + 3
    assert metric(server, "rt_connects_total") == before["rt_connects_total"] + 2
    assert metric(server, "rt_dedupe_hits_total") == 1
    assert "rt_redis_errors_total" in body and "rt_recoveries_total" in body


async def test_operator_join_keeps_to_the_room_cap(servers, js, tmp_path):
    """limits.max_rooms_per_socket covers every path: an Admin UI join leaves out a socket that is
    in as many rooms as a client may join."""
    config = tmp_path / "config.toml"
    config.write_text("[limits]\nmax_rooms_per_socket = 2\n")
    srv = servers(env=ENV, args=["--config", str(config)])
    await js.connect("full", srv.url + "/chat", transports=["websocket"])
    await js.connect("free", srv.url + "/chat", transports=["websocket"])
    for room in ("a", "b"):
        assert (await js.emit("full", "join", {"room": room}))["ok"]
    assert (await js.emit("full", "join", {"room": "c"}))["error"]["code"] == "too_many_rooms"
    await admin(js, "op", srv)
    assert await js.emit("op", "join", "/chat", "room:ops", None) == {"ok": True, "count": 1}
    # a room the socket is in already does not count twice
    assert await js.emit("op", "join", "/chat", "room:a", None) == {"ok": True, "count": 2}
    await js.emit("op", "emit", "/chat", "room:ops", "notice", {"n": 1})
    await js.wait("free", "notice", 1)
    await asyncio.sleep(0.3)
    assert await js.events("full", "notice") == []
