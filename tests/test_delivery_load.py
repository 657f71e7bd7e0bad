"""The delivery core under load with Redis: events of one connection stay in send order, the
Redis pool waits instead of failing, connect storms get through, and a store failure is
answered with an error ack, never silence (issue 13, first step)."""

from __future__ import annotations

import asyncio

import pytest

from test_delivery import metric

# Client limits raised so that the load is what is tested, not the rate limiter.
FAST = {"EVENTS_PER_SECOND": "100000", "EVENT_BURST": "100000"}


def paced_sender(name: str, room: str, count: int, rate: int, tag: str) -> str:
    """JS that sends ``count`` chat messages at ``rate``/s without waiting for acks, then
    waits for every ack; returns the acks in send order."""
    return f"""
        const s = ctx.sockets.get({name!r}).socket;
        const acks = [];
        const started = Date.now();
        for (let i = 0; i < {count}; i++) {{
            const due = started + i * 1000 / {rate};
            const wait = due - Date.now();
            if (wait > 0) await new Promise((r) => setTimeout(r, wait));
            acks.push(s.timeout(20000).emitWithAck('message', {{room: {room!r}, text: '{tag}-' + i}})
                .catch((e) => ({{ok: false, error: {{code: 'timeout', message: String(e)}}}})));
        }}
        return await Promise.all(acks);"""


async def history_texts(js, name: str, room: str) -> list[tuple[int, str]]:
    """Every message of ``room`` through ``history`` paged by ``after``: (seq, text) in order."""
    out: list[tuple[int, str]] = []
    after = 0
    while True:
        page = await js.emit(name, "history", {"room": room, "after": after, "limit": 200})
        assert page["ok"], page
        if not page["messages"]:
            return out
        out.extend((m["seq"], m["text"]) for m in page["messages"])
        after = page["messages"][-1]["seq"]


@pytest.mark.parametrize("senders", [1, 5])
async def test_events_of_each_connection_arrive_in_send_order_across_nodes(redis_url, servers, js, senders):
    env = {"REDIS_URL": redis_url, **FAST}
    a, b = servers(env=env), servers(env=env)
    count = 2000 // senders
    await js.connect("watcher", b.url + "/chat", transports=["websocket"])
    assert (await js.emit("watcher", "join", {"room": "load"}))["ok"]
    names = [f"s{i}" for i in range(senders)]
    for name in names:
        await js.connect(name, a.url + "/chat", transports=["websocket"])
        assert (await js.emit(name, "join", {"room": "load"}))["ok"]
    results = await asyncio.gather(*(
        js.call("eval", py_timeout=90, code=paced_sender(name, "load", count, 500 // senders, name))
        for name in names))
    for result in results:
        acks = result["value"]
        failed = [ack for ack in acks if not ack.get("ok")]
        assert not failed, failed[:3]
        seqs = [ack["seq"] for ack in acks]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), \
            "one sender's messages were logged out of send order"
    await js.wait("watcher", "message", count * senders, timeout=30000)
    await asyncio.sleep(0.5)
    received = [e["args"][0]["text"] for e in await js.events("watcher", "message")]
    assert len(received) == count * senders and len(set(received)) == len(received)
    for name in names:
        mine = [t for t in received if t.startswith(name + "-")]
        assert mine == [f"{name}-{i}" for i in range(count)], f"{name}'s messages out of order"
    history = await history_texts(js, "watcher", "load")
    assert sorted(t for _, t in history) == sorted(received)
    seqs = [s for s, _ in history]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    for name in names:
        assert [t for _, t in history if t.startswith(name + "-")] == [f"{name}-{i}" for i in range(count)]
    for proc in (a, b):
        assert "Too many connections" not in proc.output()
        assert "handler failed" not in proc.output()


async def test_many_clients_sending_at_once_with_redis_all_acked(redis_url, servers, js):
    node = servers(env={"REDIS_URL": redis_url, **FAST})
    value = (await js.call("eval", py_timeout=120, code=f"""
        const sockets = [];
        for (let i = 0; i < 200; i++) {{
            const s = ctx.io({node.url + '/chat'!r}, {{forceNew: true, transports: ['websocket']}});
            sockets.push(s);
        }}
        await ctx.until(() => sockets.every((s) => s.connected), 60000, 'all connected');
        // 20 rooms of 10: the load is on the store, not on fanning out to 200 recipients.
        const joins = await Promise.all(sockets.map((s, i) => s.timeout(30000).emitWithAck('join', {{room: `storm${{i % 20}}`}})));
        const acks = await Promise.all(sockets.flatMap((s, i) => Array.from({{length: 20}}, (_, j) =>
            s.timeout(30000).emitWithAck('message', {{room: `storm${{i % 20}}`, text: `c${{i}}-${{j}}`}})
              .catch((e) => ({{ok: false, error: {{code: 'timeout'}}}})))));
        sockets.forEach((s) => s.disconnect());
        return {{joins: joins.filter((j) => j.ok).length, acks: acks.filter((a) => a.ok).length,
                 failed: acks.filter((a) => !a.ok).slice(0, 3)}};"""))["value"]
    assert value["joins"] == 200
    assert value["acks"] == 4000, value["failed"]
    out = node.output()
    assert "Too many connections" not in out and "No connection available" not in out


@pytest.mark.timeout(400)  # every join is announced to the room: 500k presence deliveries
async def test_connect_storm_on_a_redis_node(redis_url, servers, js):
    node = servers(env={"REDIS_URL": redis_url, **FAST, "MAX_CONNECTIONS_PER_IP": "5000"})
    value = (await js.call("eval", py_timeout=380, code=f"""
        const url = {node.url + '/chat'!r};
        let joined = 0, failed = [];
        async function one(i) {{
            const s = ctx.io(url, {{forceNew: true, transports: ['websocket'], reconnection: false, timeout: 60000}});
            await new Promise((resolve, reject) => {{
                s.once('connect', resolve);
                s.once('connect_error', (e) => reject(new Error('connect_error ' + e.message)));
            }});
            const ack = await s.timeout(60000).emitWithAck('join', {{room: 'storm'}});
            if (ack.ok) joined++; else failed.push(ack);
            return s;
        }}
        const sockets = [];
        let next = 0;
        async function worker() {{
            while (next < 1000) {{
                const i = next++;
                try {{ sockets.push(await one(i)); }} catch (e) {{ failed.push(String(e)); }}
            }}
        }}
        await Promise.all(Array.from({{length: 100}}, worker));
        const count = sockets.length;
        sockets.forEach((s) => s.disconnect());
        return {{connected: count, joined, failed: failed.slice(0, 3)}};"""))["value"]
    assert value == {"connected": 1000, "joined": 1000, "failed": []}
    out = node.output()
    assert "Too many connections" not in out and "No connection available" not in out


async def test_redis_outage_mid_stream_every_ack_answered_no_acked_message_lost(servers, js):
    from harness import RedisServer

    redis = RedisServer(appendonly=True).start()
    try:
        node = servers(env={"REDIS_URL": redis.url, **FAST})
        await js.connect("a", node.url + "/chat", transports=["websocket"])
        assert (await js.emit("a", "join", {"room": "outage"}))["ok"]
        await js.call("eval", code=paced_sender("a", "outage", 600, 100, "m").replace(
            "return await Promise.all(acks);", "globalThis.outageAcks = Promise.all(acks); return true;"))
        await asyncio.sleep(1.5)
        redis.stop()
        await asyncio.sleep(3)
        redis.start()
        acks = (await js.call("eval", py_timeout=120, code="return await globalThis.outageAcks;"))["value"]
        assert len(acks) == 600
        # Every ack is an answer: ok, or an error the client can act on; none timed out.
        assert all(ack.get("ok") or ack["error"]["code"] == "unavailable" for ack in acks), \
            [a for a in acks if not a.get("ok") and a["error"]["code"] != "unavailable"][:3]
        # The node really lost Redis while the stream ran (else this test proves nothing).
        assert metric(node, "rt_redis_errors_total") > 0
        acked = {f"m-{i}" for i, ack in enumerate(acks) if ack.get("ok")}
        await js.connect("reader", node.url + "/chat", transports=["websocket"])
        for _ in range(50):
            page = await js.emit("reader", "join", {"room": "outage"})
            if page.get("ok"):
                break
            await asyncio.sleep(0.2)
        stored = {t for _, t in await history_texts(js, "reader", "outage")}
        assert acked <= stored, sorted(acked - stored)[:5]
    finally:
        redis.cleanup()


async def test_a_connection_ahead_of_its_handlers_is_paused_not_dropped(redis_url, redis_server, servers, js):
    """Handlers stuck on a paused Redis: the connection's events wait (at most 8 here), the
    server stops reading from it meanwhile, and afterwards every event is handled, in order."""
    node = servers(env={"REDIS_URL": redis_url, **FAST, "MAX_INFLIGHT_EVENTS": "8"})
    await js.connect("a", node.url + "/chat", transports=["websocket"])
    assert (await js.emit("a", "join", {"room": "slow"}))["ok"]
    redis_server.cli("CLIENT", "PAUSE", "1500", "WRITE")
    acks = (await js.call("eval", py_timeout=60, code="""
        const s = ctx.sockets.get('a').socket;
        return await Promise.all(Array.from({length: 300}, (_, i) =>
            s.timeout(20000).emitWithAck('message', {room: 'slow', text: 'p-' + i})));"""))["value"]
    assert all(ack["ok"] for ack in acks)
    seqs = [ack["seq"] for ack in acks]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert metric(node, "rt_backpressure_pauses_total") > 0
    history = await history_texts(js, "a", "slow")
    assert [t for _, t in history] == [f"p-{i}" for i in range(300)]


async def test_a_node_whose_subscriptions_are_cut_catches_up_in_order(redis_url, redis_server, servers, js):
    """Redis drops every pub/sub connection mid-stream: the watcher's node resubscribes, reads
    each channel's gap from its history, and the watcher gets every message once, in order."""
    env = {"REDIS_URL": redis_url, **FAST}
    a, b = servers(env=env), servers(env=env)
    await js.connect("watcher", b.url + "/chat", transports=["websocket"])
    await js.connect("s", a.url + "/chat", transports=["websocket"])
    for name in ("watcher", "s"):
        assert (await js.emit(name, "join", {"room": "cut"}))["ok"]
    await js.call("eval", code=paced_sender("s", "cut", 300, 100, "m").replace(
        "return await Promise.all(acks);", "globalThis.cutAcks = Promise.all(acks); return true;"))
    for _ in range(3):
        await asyncio.sleep(0.7)
        redis_server.cli("CLIENT", "KILL", "TYPE", "pubsub")
    acks = (await js.call("eval", py_timeout=60, code="return await globalThis.cutAcks;"))["value"]
    assert all(ack.get("ok") for ack in acks)
    await js.wait("watcher", "message", 300, timeout=20000)
    await asyncio.sleep(0.5)
    texts = [e["args"][0]["text"] for e in await js.events("watcher", "message")]
    assert texts == [f"m-{i}" for i in range(300)]
    assert metric(b, "rt_channel_history_reads_total") > 0  # it did have to read a gap
