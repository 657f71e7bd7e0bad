"""Every event of every namespace with the official JS client, error paths included: a bad
payload gets an error ack, and the connection and other users are unaffected."""

from __future__ import annotations

import asyncio
import json


from harness import b, unb


async def expect_error(js, name, event, payload, code):
    ack = await js.emit(name, event, payload)
    assert ack["ok"] is False and ack["error"]["code"] == code, ack
    assert (await js.state(name))["connected"]


async def test_chat_events_and_errors(server, js):
    for name in ("a", "b"):
        await js.connect(name, server.url + "/chat", transports=["websocket"])
    me_a = await js.emit("a", "whoami")
    me_b = await js.emit("b", "whoami")
    assert me_a["guest"] and me_a["user"].startswith("guest-") and me_a["user"] != me_b["user"]

    joined = await js.emit("a", "join", {"room": "r1"})
    assert [m["user"] for m in joined["members"]] == [me_a["user"]]
    await js.emit("b", "join", {"room": "r1"})
    presence = await js.wait("a", "presence", 2)
    assert presence[-1]["args"][0] == {"room": "r1", "user": me_b["user"], "name": me_b["name"], "action": "join"}
    assert len((await js.emit("a", "presence", {"room": "r1"}))["members"]) == 2

    sent = await js.emit("a", "message", {"room": "r1", "text": "hi"})
    assert sent["ok"] and sent["id"] and sent["seq"] and sent["ts"] > 0
    [msg] = await js.wait("b", "message", 1)
    assert msg["args"][0]["id"] == sent["id"] and msg["args"][0]["seq"] == sent["seq"]

    await js.send("a", "typing", {"room": "r1", "typing": True})
    [typing] = await js.wait("b", "typing", 1)
    assert typing["args"][0]["user"] == me_a["user"] and typing["args"][0]["typing"] is True
    assert await js.events("a", "typing") == []  # not echoed to the sender

    for i in range(3):
        await js.emit("b", "message", {"room": "r1", "text": f"h{i}"})
    history = await js.emit("a", "history", {"room": "r1", "limit": 2})
    assert [m["text"] for m in history["messages"]] == ["h1", "h2"] and history["complete"]
    after = await js.emit("a", "history", {"room": "r1", "after": sent["seq"], "limit": 10})
    assert [m["text"] for m in after["messages"]] == ["h0", "h1", "h2"]
    before = await js.emit("a", "history", {"room": "r1", "before": history["messages"][0]["seq"], "limit": 10})
    assert [m["text"] for m in before["messages"]] == ["hi", "h0"]

    dm = await js.emit("a", "dm", {"to": me_b["user"], "text": "secret"})
    [got] = await js.wait("b", "dm", 1)
    assert got["args"][0]["id"] == dm["id"] and got["args"][0]["from"] == me_a["user"]
    assert await js.emit("b", "dm_ack", {"ids": [dm["id"]]}) == {"ok": True, "acked": 1}

    left = await js.emit("b", "leave", {"room": "r1"})
    assert left == {"ok": True, "room": "r1"}
    leave_event = await js.wait("a", "presence", 3)
    assert leave_event[-1]["args"][0]["action"] == "leave"

    # error paths
    await expect_error(js, "a", "join", {"room": ""}, "invalid_room")
    await expect_error(js, "a", "join", {"room": "x" * 65}, "invalid_room")
    await expect_error(js, "a", "join", {"room": "../etc"}, "invalid_room")
    await expect_error(js, "a", "join", "r1", "invalid_payload")
    await expect_error(js, "a", "message", {"room": "r1", "text": ""}, "invalid_text")
    await expect_error(js, "a", "message", {"room": "r1", "text": "x" * 4001}, "text_too_long")
    await expect_error(js, "a", "message", {"room": "r1", "text": 5}, "invalid_text")
    await expect_error(js, "a", "message", {"room": "elsewhere", "text": "x"}, "not_in_room")
    await expect_error(js, "a", "history", {"room": "r1", "limit": 0}, "invalid_limit")
    await expect_error(js, "a", "history", {"room": "r1", "limit": True}, "invalid_limit")
    await expect_error(js, "a", "history", {"room": "r1", "after": "nope"}, "invalid_offset")
    await expect_error(js, "a", "dm", {"to": "", "text": "x"}, "invalid_user")
    await expect_error(js, "a", "dm_ack", {"ids": "x"}, "invalid_ids")
    await expect_error(js, "a", "no_such_event", {}, "unknown_event")
    await expect_error(js, "a", "auth", {"token": "x"}, "invalid_token")
    # nothing of that disturbed the room
    await js.emit("b", "join", {"room": "r1"})
    ok = await js.emit("a", "message", {"room": "r1", "text": "still fine"})
    assert ok["ok"]
    texts = [e["args"][0]["text"] for e in await js.wait("b", "message", 5)]
    assert texts[-1] == "still fine"


async def test_rooms_per_socket_limit(servers, js, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[limits]\nmax_rooms_per_socket = 3\n")
    srv = servers(args=["--config", str(cfg)])
    await js.connect("a", srv.url + "/chat", transports=["websocket"])
    for i in range(3):
        assert (await js.emit("a", "join", {"room": f"r{i}"}))["ok"]
    await expect_error(js, "a", "join", {"room": "r3"}, "too_many_rooms")
    assert (await js.emit("a", "join", {"room": "r0"}))["ok"]  # rejoining is fine


async def test_game_events_and_errors(server, js):
    for name in ("host", "guest", "third"):
        await js.connect(name, server.url + "/game", transports=["websocket"])
    created = await js.emit("host", "create", {"name": "duel", "capacity": 2})
    gid = created["game"]["id"]
    lobby = await js.wait("guest", "lobby", 1)
    assert any(g["id"] == gid for g in lobby[-1]["args"][0]["games"])
    assert [g["id"] for g in (await js.emit("guest", "list"))["games"]] == [gid]
    await expect_error(js, "guest", "start", {"game": gid}, "not_host")
    assert (await js.emit("host", "join", {"game": gid}))["ok"]
    await expect_error(js, "host", "start", {"game": gid}, "not_enough_players")
    assert (await js.emit("guest", "join", {"game": gid}))["ok"]
    await expect_error(js, "third", "join", {"game": gid}, "game_full")
    started = await js.emit("host", "start", {"game": gid})
    assert started["ok"] and started["state"]["state"] == "playing"
    await expect_error(js, "host", "start", {"game": gid}, "already_started")
    await expect_error(js, "third", "input", {"game": gid, "dir": "up"}, "not_a_player")
    await expect_error(js, "host", "input", {"game": gid, "dir": "sideways"}, "invalid_input")
    await expect_error(js, "host", "join", {"game": "nope"}, "no_such_game")
    await expect_error(js, "host", "create", {"capacity": 99}, "invalid_capacity")
    await expect_error(js, "host", "create", {"name": ""}, "invalid_name")
    states = await js.wait("guest", "state", 5)
    ticks = [s["args"][0]["tick"] for s in states]
    assert ticks[-1] > ticks[0] and all(len(s["args"]) == 1 for s in states)  # volatile: no offset
    # rate limit: a burst far above inputs_per_second is refused
    results = (await js.call("emitMany", name="host", event="input",
                             argsList=[[{"game": gid, "dir": "up"}]] * 200))["results"]
    assert any(r and r.get("error", {}).get("code") == "rate_limited" for r in results)
    # dropping mid-game keeps the slot; rejoining restores it
    await js.call("close", name="guest")
    await js.connect("guest2", server.url + "/game", transports=["websocket"])
    rejoin_denied = await js.emit("guest2", "join", {"game": gid})
    assert rejoin_denied["ok"] is False and rejoin_denied["error"]["code"] == "game_started"
    # the burst above also emptied the host's per-connection event bucket (50/s): let it refill
    await asyncio.sleep(0.5)
    assert (await js.emit("host", "leave", {"game": gid}))["ok"]


async def test_game_over_announces_results(servers, js):
    srv = servers(env={"GAME_DURATION": "1"})
    for name in ("a", "b"):
        await js.connect(name, srv.url + "/game", transports=["websocket"])
    gid = (await js.emit("a", "create", {"capacity": 2}))["game"]["id"]
    for name in ("a", "b"):
        await js.emit(name, "join", {"game": gid})
    await js.emit("a", "start", {"game": gid})
    [over] = await js.wait("b", "game_over", 1, timeout=6000)
    result = over["args"][0]
    assert result["game"] == gid and len(result["results"]) == 2 and result["winner"]


async def test_game_across_two_nodes(servers, js, redis_url):
    env = {"REDIS_URL": redis_url}
    n1, n2 = servers(env=env), servers(env=env)
    await js.connect("host", n1.url + "/game", transports=["websocket"])
    await js.connect("guest", n2.url + "/game", transports=["polling"])
    gid = (await js.emit("host", "create", {"capacity": 2}))["game"]["id"]
    assert [g["id"] for g in (await js.emit("guest", "list"))["games"]] == [gid]
    assert (await js.emit("host", "join", {"game": gid}))["ok"]
    joined = await js.emit("guest", "join", {"game": gid})
    assert joined["ok"] and len(joined["state"]["players"]) == 2
    await expect_error(js, "guest", "start", {"game": gid}, "not_host")
    assert (await js.emit("host", "start", {"game": gid}))["ok"]
    assert await js.emit("guest", "input", {"game": gid, "dir": "left"}) is None
    states = await js.wait("guest", "state", 10)
    assert states[-1]["args"][0]["state"] == "playing"


async def test_collab_events_and_errors(server, js):
    for name in ("a", "b"):
        await js.connect(name, server.url + "/collab", transports=["websocket"])
    opened = await js.emit("a", "open", {"doc": "d"})
    assert opened["ok"] and unb(opened["update"])
    await js.emit("b", "open", {"doc": "d"})
    update = (await js.call("eval", code="""
        const Y = ctx.require('yjs');
        const doc = new Y.Doc(); doc.getText('text').insert(0, 'hello');
        return Y.encodeStateAsUpdate(doc);"""))["value"]
    assert (await js.emit("a", "update", {"doc": "d", "update": update}))["ok"]
    [got] = await js.wait("b", "update", 1)
    assert got["args"][0]["doc"] == "d" and unb(got["args"][0]["update"]) == unb(update)
    assert await js.events("a", "update") == []  # not echoed to the author
    synced = await js.emit("b", "sync", {"doc": "d", "stateVector": b(b"\x00")})
    assert synced["ok"] and unb(synced["update"])
    await js.send("a", "awareness", {"doc": "d", "state": {"cursor": 3}})
    [aw] = await js.wait("b", "awareness", 1)
    assert aw["args"][0]["state"] == {"cursor": 3}
    await expect_error(js, "a", "update", {"doc": "d", "update": "text"}, "invalid_update")
    await expect_error(js, "a", "update", {"doc": "d", "update": b(b"\xff\xfe garbage")}, "invalid_update")
    await expect_error(js, "a", "update", {"doc": "other", "update": update}, "not_open")
    await expect_error(js, "a", "sync", {"doc": "d", "stateVector": "x"}, "invalid_state_vector")
    await expect_error(js, "a", "open", {"doc": ""}, "invalid_room")
    assert (await js.emit("a", "close", {"doc": "d"}))["ok"]
    await expect_error(js, "a", "update", {"doc": "d", "update": update}, "not_open")


YJS_CLIENT = """
const Y = ctx.require('yjs');
const { io } = ctx.require('socket.io-client');
globalThis.editors = globalThis.editors || {};
const name = %(name)r;
const socket = io(%(url)r, { transports: ['websocket'], forceNew: true, reconnectionDelay: 100 });
const doc = new Y.Doc();
const text = doc.getText('text');
const ed = { socket, doc, text };
doc.on('update', (update, origin) => { if (origin !== 'remote' && socket.connected) socket.emit('update', { doc: 'shared', update }); });
socket.on('update', (u) => Y.applyUpdate(doc, new Uint8Array(u.update), 'remote'));
ed.sync = async () => {
  const r = await socket.emitWithAck('open', { doc: 'shared' });
  Y.applyUpdate(doc, new Uint8Array(r.update), 'remote');
  await socket.emitWithAck('update', { doc: 'shared', update: Y.encodeStateAsUpdate(doc) });
};
// Keep the guest id, as the demo page does: a reconnect that is not a recovery is still the
// user who owns this Y.Doc's client id (/collab binds client ids to users).
socket.on('connect', () => { ed.ready = socket.emitWithAck('whoami').then((me) => { socket.auth = { guestToken: me.guestToken }; return ed.sync(); }); });
globalThis.editors[name] = ed;
await ctx.until(() => ed.ready, 5000, 'connect');
await ed.ready;
return true;
"""


async def test_yjs_clients_converge_with_concurrent_and_offline_edits(server, js):
    names = ["e1", "e2", "e3"]
    for name in names:
        await js.call("eval", code=YJS_CLIENT % {"name": name, "url": server.url + "/collab"})
    # concurrent edits at the same position from every client
    await js.call("eval", code="""
        for (const [i, name] of ['e1', 'e2', 'e3'].entries()) {
          const t = globalThis.editors[name].text;
          for (let k = 0; k < 20; k++) t.insert(0, name + ':' + k + ' ');
        }
        return true;""")
    # one client goes offline, edits, comes back
    await js.call("eval", code="""
        const ed = globalThis.editors.e3;
        ed.socket.disconnect();
        ed.text.insert(ed.text.length, ' [offline edit]');
        // Delete inside its own text: what sits at position 0 depends on the clients' random
        // Yjs ids and on whether the others' edits had arrived yet.
        ed.text.delete(ed.text.toString().indexOf('e3:0 '), 3);
        return true;""")
    await js.call("eval", code="globalThis.editors.e1.text.insert(0, '[online edit] '); return true;")
    await asyncio.sleep(0.3)
    await js.call("eval", code="""
        const ed = globalThis.editors.e3;
        ed.ready = null; ed.socket.connect();
        await ctx.until(() => ed.ready, 5000, 'reconnect'); await ed.ready; return true;""")
    texts = None
    for _ in range(50):
        texts = (await js.call("eval", code="""
            return ['e1','e2','e3'].map(n => globalThis.editors[n].text.toString());"""))["value"]
        if len(set(texts)) == 1:
            break
        await asyncio.sleep(0.1)
    assert len(set(texts)) == 1, texts
    final = texts[0]
    assert "[offline edit]" in final and "[online edit]" in final
    assert all(f"{n}:19" in final for n in ("e1", "e2"))
    assert "e3:0 " not in final and "e3:19 " in final  # the offline delete merged, nothing else lost
    # a late joiner gets the same document from the server's stored state
    await js.call("eval", code=YJS_CLIENT % {"name": "late", "url": server.url + "/collab"})
    late = (await js.call("eval", code="return globalThis.editors.late.text.toString();"))["value"]
    assert late == final
    await js.call("eval", code="for (const ed of Object.values(globalThis.editors)) ed.socket.disconnect(); return true;")


async def test_collab_documents_are_compacted_and_stay_whole(servers, js):
    server = servers(env={"EVENTS_PER_SECOND": "100000", "EVENT_BURST": "100000"})
    await js.connect("w", server.url + "/collab", transports=["websocket"])
    await js.emit("w", "open", {"doc": "long"})
    # 250 separate updates: past the compaction threshold (200), snapshot + tail must still be whole
    await js.call("eval", code="""
        const Y = ctx.require('yjs');
        const s = ctx.sockets.get('w').socket;
        const doc = new Y.Doc();
        doc.on('update', (u) => s.emit('update', { doc: 'long', update: u }));
        for (let i = 0; i < 250; i++) doc.getText('text').insert(doc.getText('text').length, i + ',');
        await s.emitWithAck('whoami');
        globalThis.expected = doc.getText('text').toString();
        return true;""")
    await js.connect("late", server.url + "/collab", transports=["polling"])
    opened = await js.emit("late", "open", {"doc": "long"})
    text = (await js.call("eval", code="""
        const Y = ctx.require('yjs');
        const doc = new Y.Doc();
        Y.applyUpdate(doc, ctx.fromWire(%s));
        return doc.getText('text').toString();""" % (json.dumps(opened["update"]),)))["value"]
    expected = (await js.call("eval", code="return globalThis.expected;"))["value"]
    assert text == expected and text.startswith("0,1,2,") and text.endswith("249,")
