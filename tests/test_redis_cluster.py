"""Server nodes on a real Redis Cluster (3 primaries, 3 replicas), found from a plain redis://
URL to one cluster node, with the official JS client: the single-Redis scenarios of
test_recovery, test_delivery and test_cluster again — and a primary killed mid-traffic.

The scenarios that do not kill or move a cluster node run on both backing stores of more than
one Redis (``store_url``): the cluster, and three independent redis-servers with each channel
on one of them (``redis+shards://``)."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Awaitable, Callable

import pytest

import redis
import redis.asyncio as aioredis

from harness import Nginx
from realtime_channels.emitter import AsyncEmitter, Emitter
from realtime_channels.redis_channel_log import channel_keys
from realtime_channels.sharding import shard_of
from test_api import ENV as API_ENV, call, sid_of
from test_recovery import TRANSPORTS, assert_exactly_once_in_order, cut_and_publish, publish, sub_and_pub


@pytest.fixture
def nginx():
    made = []

    def start(ports):
        n = Nginx(ports).start()
        made.append(n)
        return n

    yield start
    for n in made:
        n.stop()


def on_cluster(url: str, **extra: str) -> dict[str, str]:
    return {"REDIS_URL": url, **extra}


@pytest.fixture(params=["cluster", "shards"])
def store_url(request) -> str:
    """The nodes' ``REDIS_URL``: a plain redis:// URL to one node of the shared Redis Cluster,
    or ``redis+shards://`` naming three independent redis-servers; each emptied first."""
    return request.getfixturevalue("cluster_url" if request.param == "cluster" else "shards_url")


async def test_two_nodes_start_on_a_cluster_and_register_each_other(servers, cluster_url, redis_cluster):
    n1, n2 = servers(env=on_cluster(cluster_url)), servers(env=on_cluster(cluster_url))
    for node in (n1, n2):
        status, body = node.get("/readyz")
        assert status == 200, (body, node.output()[-2000:])
    # the registry is two keys of one slot ({nodes}) on one primary
    owner = redis_cluster.primary_for("rt:{nodes}")
    assert sorted(owner.client().zrange("rt:{nodes}", 0, -1)) == sorted([f"node-{n1.port}", f"node-{n2.port}"])
    for node in (n1, n2):
        assert "MOVED" not in node.output() and "CROSSSLOT" not in node.output(), node.output()[-2000:]


async def test_two_nodes_start_on_shards_and_spread_their_state(servers, js, shards_url, redis_shards):
    n1, n2 = servers(env=on_cluster(shards_url)), servers(env=on_cluster(shards_url))
    for node in (n1, n2):
        status, body = node.get("/readyz")
        assert status == 200, (body, node.output()[-2000:])
    # the registry ({nodes}) and the bus ({bus}) live on the instance their tag routes to
    owner = redis.Redis(port=redis_shards[shard_of("rt:{nodes}", 3)].port)
    assert sorted(owner.zrange("rt:{nodes}", 0, -1)) == sorted([f"node-{n1.port}".encode(), f"node-{n2.port}".encode()])
    bus = redis.Redis(port=redis_shards[shard_of("rt:{bus}", 3)].port)
    assert bus.pubsub_numsub("rt:{bus}") == [(b"rt:{bus}", 2)]
    # rooms spread over every instance, each room's keys on its own
    await js.connect("c", n1.url + "/chat", transports=["websocket"])
    for i in range(12):
        assert (await js.emit("c", "join", {"room": f"r{i}"}))["ok"]
        assert (await js.emit("c", "message", {"room": f"r{i}", "text": "hi"}))["ok"]
    await js.wait("c", "message", 12)
    for index, server in enumerate(redis_shards):
        streams = redis.Redis(port=server.port).keys("rt:{/chat|room:*}:stream")
        assert streams, f"instance {index} holds no room"
        assert {shard_of(k, 3) for k in streams} == {index}
    for node in (n1, n2):
        assert "Traceback" not in node.output(), node.output()[-2000:]


def emitters(url: str) -> tuple[Emitter, AsyncEmitter]:
    """A synchronous and an asyncio emitter on the nodes' store, as an app would make them."""
    if url.startswith("redis+shards://"):
        return Emitter(url), AsyncEmitter(url)  # the server's own URL
    return (Emitter(client=redis.RedisCluster.from_url(url), sharded=True),
            AsyncEmitter(client=aioredis.RedisCluster.from_url(url), sharded=True))


async def test_emitters_reach_clients_of_rooms_on_every_instance(servers, js, store_url):
    """Each room's publication is written where the nodes read that room: on its cluster slot's
    primary, or on the instance its tag routes to."""
    env = on_cluster(store_url)
    n1, n2 = servers(env=env), servers(env=env)
    # rooms whose channels live on three different instances (or slots)
    rooms: dict[int, str] = {}
    for i in range(100):
        rooms.setdefault(shard_of(channel_keys("rt", f"/chat|room:e{i}").stream, 3), f"e{i}")
    assert len(rooms) == 3
    for name, node in (("a", n1), ("b", n2)):
        await js.connect(name, node.url + "/chat", transports=["websocket"])
        for room in rooms.values():
            assert (await js.emit(name, "join", {"room": room}))["ok"]
    sync, asyncio_emitter = emitters(store_url)
    try:
        for room in rooms.values():
            sent = sync.emit("announce", {"text": f"sync {room}"}, to=f"room:{room}", namespace="/chat")
            assert sent["offset"] >= 1
            assert (await asyncio_emitter.emit("announce", {"text": f"async {room}"}, to=f"room:{room}",
                                               namespace="/chat"))["offset"] >= 1
    finally:
        sync.close()
        await asyncio_emitter.close()
    expected = sorted(f"{kind} {room}" for room in rooms.values() for kind in ("sync", "async"))
    for name in ("a", "b"):
        events = await js.wait(name, "announce", len(expected))
        assert sorted(e["args"][0]["text"] for e in events) == expected


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_recovery_on_another_node(servers, js, proxies, store_url, transport):
    env = on_cluster(store_url, PING_INTERVAL="1", PING_TIMEOUT="1")
    node1, node2 = servers(env=env), servers(env=env)
    proxy, sub = await sub_and_pub(js, proxies, node1, node2, transports=TRANSPORTS[transport])
    await publish(js, "pub", "r", ["a", "b"])
    await js.wait("sub", "message", 2)
    await cut_and_publish(js, proxy, "sub", "pub", "r", ["c", "d", "e"])
    proxy.up([node2.port])  # back through the balancer, to the other node
    state = await js.call("waitConnects", name="sub", count=2)
    assert state["recovered"] is True, (state, node1.output()[-2000:], node2.output()[-2000:])
    assert state["sid"] == sub["sid"]
    await publish(js, "pub", "r", ["f"])
    await js.wait("sub", "message", 6)
    await asyncio.sleep(0.3)
    assert_exactly_once_in_order(await js.events("sub", "message"), ["a", "b", "c", "d", "e", "f"])


async def test_broadcast_reaches_members_on_every_node(servers, js, store_url):
    env = on_cluster(store_url)
    nodes = [servers(env=env) for _ in range(2)]
    names = ["c0", "c1", "c2", "c3"]
    for i, name in enumerate(names):
        await js.connect(name, nodes[i % 2].url + "/chat", transports=["websocket" if i % 2 else "polling"])
        assert (await js.emit(name, "join", {"room": "r"}))["ok"]
    for name in names:
        assert (await js.emit(name, "message", {"room": "r", "text": f"from {name}"}))["ok"]
    for name in names:
        events = await js.wait(name, "message", 4)
        assert [e["args"][0]["text"] for e in events] == [f"from {n}" for n in names]  # same order everywhere
    # volatile events cross nodes over the bus (a shard channel)
    await js.send("c0", "typing", {"room": "r", "typing": True})
    for name in ("c1", "c3"):
        await js.wait(name, "typing", 1)


async def test_presence_across_nodes_and_a_dead_node_leaves(servers, js, store_url):
    env = on_cluster(store_url, PRESENCE_TTL="1.5")
    n1, n2 = servers(env=env), servers(env=env)
    await js.connect("doomed", n1.url + "/chat", transports=["websocket"], reconnection=False)
    await js.connect("survivor", n2.url + "/chat", transports=["websocket"])
    doomed = await js.emit("doomed", "whoami")
    survivor = await js.emit("survivor", "whoami")
    for name in ("doomed", "survivor"):
        await js.emit(name, "join", {"room": "r"})
    members = (await js.emit("survivor", "presence", {"room": "r"}))["members"]
    assert sorted(m["user"] for m in members) == sorted([doomed["user"], survivor["user"]])
    before = len(await js.events("survivor", "presence"))
    n1.kill()
    events = await js.wait("survivor", "presence", before + 1, timeout=10000)
    leave = events[-1]["args"][0]
    assert leave["action"] == "leave" and leave["user"] == doomed["user"]
    members = (await js.emit("survivor", "presence", {"room": "r"}))["members"]
    assert [m["user"] for m in members] == [survivor["user"]]


async def test_sockets_of_every_node_are_listed_by_request_and_reply(servers, js, store_url):
    """The server API asks every node over the bus (requests and replies on the shard channel)."""
    env = {**API_ENV, **on_cluster(store_url)}
    n1, n2 = servers(env=env), servers(env=env)
    await js.connect("u1", n1.url + "/chat", transports=["websocket"])
    await js.connect("u2", n2.url + "/chat", transports=["websocket"])
    for name in ("u1", "u2"):
        assert (await js.emit(name, "join", {"room": "r"}))["ok"]
    status, answer, _ = await call(n1, "GET", "/sockets", query={"namespace": "/chat", "room": "r"})
    assert status == 200, answer
    assert {s["sid"] for s in answer["sockets"]} == {await sid_of(js, "u1"), await sid_of(js, "u2")}
    assert {s["node"] for s in answer["sockets"]} == {f"node-{n1.port}", f"node-{n2.port}"}


async def test_direct_message_survives_the_sender_node_being_killed(servers, js, store_url):
    env = on_cluster(store_url)
    sender_node = servers(env=env)
    receiver_node = servers(env={**env, "DIRECT_RETRY_INTERVAL": "0.3"})
    await js.connect("bob", receiver_node.url + "/chat", transports=["websocket"])
    bob = (await js.emit("bob", "whoami"))["user"]
    await js.connect("alice", sender_node.url + "/chat", transports=["websocket"])
    sent = await js.emit("alice", "dm", {"to": bob, "text": "psst"})
    assert sent["ok"]
    sender_node.kill()  # kill -9
    events = await js.wait("bob", "dm", 3, timeout=8000)  # re-sent until acked, same id
    assert {e["args"][0]["id"] for e in events} == {sent["id"]}
    assert await js.emit("bob", "dm_ack", {"ids": [sent["id"]]}) == {"ok": True, "acked": 1}
    await asyncio.sleep(0.5)
    count = len(await js.events("bob", "dm"))
    await asyncio.sleep(1.0)
    assert len(await js.events("bob", "dm")) == count


async def test_clients_of_a_killed_node_recover_on_another(servers, js, proxies, store_url):
    env = on_cluster(store_url)
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


async def test_polling_through_round_robin_nginx_without_affinity(servers, js, store_url, nginx):
    """Every other request reaches the node without the session: it is relayed to the owner,
    found in the node registry on the cluster."""
    env = on_cluster(store_url)
    n1, n2 = servers(env=env), servers(env=env)
    lb = nginx([n1.port, n2.port])
    names = [f"c{i}" for i in range(4)]
    for name in names:
        state = await js.connect(name, lb.url + "/chat", transports=["polling"],
                                 extraHeaders={"Origin": f"http://127.0.0.1:{lb.port}"})
        assert state["connected"], state
        assert (await js.emit(name, "join", {"room": "r"}))["ok"]
    for i in range(5):
        for name in names:
            assert (await js.emit(name, "message", {"room": "r", "text": f"{name}-{i}"}))["ok"]
    for name in names:
        events = await js.wait(name, "message", 20, timeout=15000)
        assert sorted(e["args"][0]["text"] for e in events) == sorted(f"{n}-{i}" for n in names for i in range(5))
        state = await js.state(name)
        assert state["connects"] == 1 and state["disconnects"] == [] and state["errors"] == [], state
    for node in (n1, n2):
        _, body = node.get("/metrics")
        assert "rt_bytes_in_total" in body


async def test_the_bus_follows_a_failover_of_its_shard(servers, js, own_redis_cluster):
    """``kill -9`` of the primary that owns the bus's slot ({bus}): both nodes subscribe again on
    the promoted replica, and volatile events and request/reply cross nodes again."""
    cluster = own_redis_cluster
    env = {**API_ENV, **on_cluster(cluster.url)}
    n1, n2 = servers(env=env), servers(env=env)
    await js.connect("a", n1.url + "/chat", transports=["websocket"])
    await js.connect("b", n2.url + "/chat", transports=["websocket"])
    for name in ("a", "b"):
        assert (await js.emit(name, "join", {"room": "r"}))["ok"]
    await js.send("a", "typing", {"room": "r", "typing": True})
    await js.wait("b", "typing", 1)
    victim = cluster.primary_for("rt:{bus}")
    heir = cluster.replica_of(victim)
    victim.kill()
    await asyncio.to_thread(wait_promoted, cluster, heir, 30)
    deadline = asyncio.get_running_loop().time() + 20
    # Both ways, since each node subscribes again on its own: node 2 hears node 1, then node 1
    # hears node 2 (the request/reply below needs node 2's reply to reach node 1).
    for sender, receiver, node in (("a", "b", n2), ("b", "a", n1)):
        count = len(await js.events(receiver, "typing"))
        while len(await js.events(receiver, "typing")) <= count:  # volatile: sent until one gets through
            assert asyncio.get_running_loop().time() < deadline, node.output()[-3000:]
            count = len(await js.events(receiver, "typing"))
            await js.send(sender, "typing", {"room": "r", "typing": True})
            await asyncio.sleep(0.3)
    status, answer, _ = await call(n1, "GET", "/sockets", query={"namespace": "/chat", "room": "r"})
    assert status == 200 and {s["node"] for s in answer["sockets"]} == {f"node-{n1.port}", f"node-{n2.port}"}
    # both nodes listen on the promoted replica itself (a shard channel, not a cluster-wide broadcast)
    assert heir.client().execute_command("PUBSUB", "SHARDNUMSUB", "rt:{bus}") == ["rt:{bus}", 2]


# ---------------------------------------------------------------------- a primary killed mid-traffic


async def send_at_50_per_second(send: Callable[[int], Awaitable[None]], stop: asyncio.Event) -> int:
    """Start ``send(0)``, ``send(1)``, … as tasks, 50 a second, until ``stop`` is set; wait for
    every one and return how many were started."""
    loop = asyncio.get_running_loop()
    sends, i, start = [], 0, loop.time()
    while not stop.is_set():
        sends.append(asyncio.create_task(send(i)))
        i += 1
        await asyncio.sleep(max(0.0, start + i * 0.02 - loop.time()))
    await asyncio.gather(*sends)
    return i


async def read_room(js, name: str, room: str) -> list[str]:
    """Every message of ``room`` still in its channel, oldest first (``history``, paged)."""
    texts: list[str] = []
    after = 0
    while True:
        page = await js.emit(name, "history", {"room": room, "limit": 200, "after": after})
        assert page["ok"], page
        texts += [m["text"] for m in page["messages"]]
        if not page["messages"] or page["messages"][-1]["seq"] >= page["seq"]:
            return texts
        after = page["messages"][-1]["seq"]


def wait_promoted(cluster, replica, timeout: float) -> None:
    """Until ``replica`` has taken over its dead primary and every live node says the cluster is ok."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if replica.info("replication").get("role") == "master" and all(n.cluster_ok() for n in cluster.live()):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{replica.port} was not promoted after {timeout}s")


def wait_rejoined(cluster, node, timeout: float) -> None:
    """Until ``node`` (restarted) replicates a primary again and every node says the cluster
    is ok (replication offsets never settle under traffic: not waited for)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            info = node.info("replication")
        except Exception:
            info = {}
        if (info.get("role") == "slave" and info.get("master_link_status") == "up"
                and all(n.cluster_ok() for n in cluster.live())):
            return
        time.sleep(0.1)
    raise TimeoutError(f"{node.port} did not rejoin as a replica after {timeout}s")


def hold_back_replication(primary, replica) -> None:
    """Make ``replica`` fall behind ``primary`` for real: it is stopped (SIGSTOP) and a 32 MB
    write fills the kernel's socket buffers between them, so what the primary writes next
    waits in its own memory — and dies with it. (On loopback a replica is otherwise never
    behind long enough for a kill -9 to lose anything: the replication stream and the client's
    ack leave in the same event-loop turn.)"""
    replica.proc.send_signal(signal.SIGSTOP)
    primary.client().set("rt:{/chat|room:busy}:ballast", b"x" * (32 << 20))


@pytest.mark.parametrize("replicas_ack,lagging", [(1, True), (0, True), (0, False)],
                         ids=["ack1-lagging-replica", "ack0-lagging-replica", "ack0-in-sync-replica"])
async def test_a_primary_killed_mid_traffic_loses_no_acked_event_with_replicas_ack(
        servers, js, own_redis_cluster, replicas_ack, lagging, record_property):
    """``kill -9`` of the primary that owns a busy room's channel while a publisher sends
    50 events/s: its replica is promoted, both server nodes follow, the subscriber keeps
    receiving. With ``replicas_ack = 1`` every acked event is in the channel and was
    delivered, also when the replica had fallen behind (``lagging``: the acks it had not
    confirmed were never given); without it, how many acked events the failover lost is
    recorded (the README states it). The killed server comes back as the new primary's
    replica, as a supervisor would restart it: with replicas_ack = 1 the shard's publishes
    wait for that."""
    cluster = own_redis_cluster
    env = on_cluster(cluster.url, REDIS_REPLICAS_ACK=str(replicas_ack), EVENTS_PER_SECOND="1000",
                     EVENT_BURST="1000", MAX_INFLIGHT_EVENTS="500")
    n1, n2 = servers(env=env), servers(env=env)
    victim = cluster.primary_for("rt:{/chat|room:busy}:meta")
    heir = cluster.replica_of(victim)
    for node in cluster.live():  # the killed primary, restarted, resyncs at once (default: 5 s later)
        node.cli("CONFIG", "SET", "repl-diskless-sync-delay", "0")
    await js.connect("pub", n1.url + "/chat", transports=["websocket"])
    await js.connect("sub", n2.url + "/chat", transports=["websocket"])
    for name in ("pub", "sub"):
        assert (await js.emit(name, "join", {"room": "busy"}))["ok"]

    acked: list[str] = []
    refused = 0
    stop = asyncio.Event()

    async def send(i: int) -> None:
        nonlocal refused
        try:
            ack = await js.emit("pub", "message", {"room": "busy", "text": f"m{i}", "eventId": f"e{i}"},
                                timeout=3000)
        except AssertionError:  # no ack within 3 s
            ack = None
        if ack and ack.get("ok"):
            acked.append(f"m{i}")
        else:
            refused += 1

    task = asyncio.create_task(send_at_50_per_second(send, stop))
    try:
        await asyncio.sleep(2.0)
        if lagging:
            await asyncio.to_thread(hold_back_replication, victim, heir)
            await asyncio.sleep(1.0)  # 50 more events, acked or not
        victim.kill()  # kill -9
        killed_at = len(acked)
        if lagging:
            heir.proc.send_signal(signal.SIGCONT)
        await asyncio.to_thread(wait_promoted, cluster, heir, 30)
        await asyncio.to_thread(victim.start)  # it rejoins as the new primary's replica
        await asyncio.to_thread(wait_rejoined, cluster, victim, 30)
        recovered_at = len(acked)
        await asyncio.sleep(3.0)
    finally:
        stop.set()
        sent = await task
    tail = [t for t in acked if int(t[1:]) >= sent - 50]  # acked of the last second's events
    assert len(tail) >= 45, (sent, len(acked), refused, n1.output()[-3000:])

    await js.connect("reader", n2.url + "/chat", transports=["websocket"])
    stored = await read_room(js, "reader", "busy")
    lost = [t for t in acked if t not in set(stored)]

    # The subscriber keeps receiving (the last second's events at least).
    must_have = set(acked) if replicas_ack else set(tail)
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        received = [e["args"][0]["text"] for e in await js.events("sub", "message")]
        if must_have <= set(received) or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.2)
    undelivered = [t for t in acked if t not in set(received)]
    phantoms = [t for t in received if t not in set(stored)]  # delivered, then lost with the primary
    for name, value in (("sent", sent), ("acked", len(acked)), ("acked_lost", len(lost)),
                        ("acked_undelivered", len(undelivered)), ("delivered_then_lost", len(phantoms)),
                        ("delivered_then_lost_never_acked", len(set(phantoms) - set(acked)))):
        record_property(name, value)
    print(f"\nreplicas_ack={replicas_ack}, {'lagging' if lagging else 'in-sync'} replica: sent {sent}, "
          f"acked {len(acked)} ({killed_at} before the kill, {recovered_at - killed_at} until the old primary "
          f"rejoined), not acked {refused}; acked but lost {len(lost)}; acked but never delivered to the "
          f"subscriber {len(undelivered)}; delivered to it, then lost with the primary {len(phantoms)} "
          f"({len(set(phantoms) - set(acked))} of them never acked)")

    assert must_have <= set(received), (sorted(must_have - set(received))[:20], len(received))
    assert len(set(received)) == len(received)  # never twice
    if replicas_ack:
        assert lost == [] and undelivered == []
        kept = set(stored)
        assert [t for t in received if t in kept] == [t for t in stored if t in set(received)]  # channel order


async def test_a_client_that_received_writes_a_failover_lost_is_never_recovered_past_them(
        servers, js, proxies, own_redis_cluster):
    """With ``replicas_ack = 0`` and a lagging replica, a subscriber receives events that the
    failover then loses, and the promoted replica gives their offsets to new events. Cut just
    before the kill, the client comes back with the offset of a lost event once the channel's
    new offsets have passed it: it must be recovered with every event the channel holds, or be
    told recovery is impossible — never recovered past the events that reused its offsets
    (what happened while the channel's epoch stayed the same)."""
    cluster = own_redis_cluster
    env = on_cluster(cluster.url, REDIS_REPLICAS_ACK="0", EVENTS_PER_SECOND="1000", EVENT_BURST="1000",
                     MAX_INFLIGHT_EVENTS="500", PING_INTERVAL="1", PING_TIMEOUT="1")
    n1, n2 = servers(env=env), servers(env=env)
    victim = cluster.primary_for("rt:{/chat|room:busy}:meta")
    heir = cluster.replica_of(victim)
    proxy = await proxies([n2.port])
    first = await js.connect("sub", proxy.url + "/chat", transports=["websocket"])
    await js.connect("pub", n1.url + "/chat", transports=["websocket"])
    await js.connect("reader", n1.url + "/chat", transports=["websocket"])
    for name in ("pub", "sub", "reader"):
        assert (await js.emit(name, "join", {"room": "busy"}))["ok"]

    stop = asyncio.Event()

    async def send(i: int) -> None:
        try:
            await js.emit("pub", "message", {"room": "busy", "text": f"m{i}", "eventId": f"e{i}"}, timeout=3000)
        except AssertionError:  # no ack: lost with the primary, or refused meanwhile
            pass

    task = asyncio.create_task(send_at_50_per_second(send, stop))
    try:
        await asyncio.sleep(1.0)
        await asyncio.to_thread(hold_back_replication, victim, heir)
        await asyncio.sleep(1.0)  # delivered to the subscriber, never replicated
        proxy.down()
        await js.call("waitDisconnects", name="sub", count=1)
        had = [e["args"][0]["text"] for e in await js.events("sub", "message")]
        held = int((await js.events("sub", "message"))[-1]["args"][-1].split("~")[0])
        victim.kill()  # kill -9
        heir.proc.send_signal(signal.SIGCONT)
        await asyncio.to_thread(wait_promoted, cluster, heir, 30)
        # Publishing goes on until the channel's offsets pass the one the client holds.
        deadline = asyncio.get_running_loop().time() + 30
        while (await js.emit("reader", "history", {"room": "busy", "limit": 1}))["seq"] < held + 5:
            assert asyncio.get_running_loop().time() < deadline, (held, n1.output()[-3000:])
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
    finally:
        stop.set()
        await task
    stored = await read_room(js, "reader", "busy")
    lost = [t for t in had if t not in set(stored)]
    assert lost, "the failover lost nothing the client had: the scenario did not happen"

    proxy.up()
    state = await js.call("waitConnects", name="sub", count=2)
    await asyncio.sleep(1.0)  # the replay, and anything after it
    received = [e["args"][0]["text"] for e in await js.events("sub", "message")]
    print(f"\nthe client held offset {held}, had {len(had)} events, {len(lost)} of them lost; "
          f"recovered: {state['recovered']}; the channel holds {len(stored)}")
    if state["recovered"]:
        assert state["sid"] == first["sid"]
        missing = [t for t in stored if t not in set(received)]
        assert missing == [], (len(missing), missing[:10], n2.output()[-3000:])
    else:
        assert state["sid"] != first["sid"]  # told: a new session, history is the application's to read
    assert len(set(received)) == len(received)  # never twice


# ---------------------------------------------------------------------- a slot migration mid-traffic


def migrate_slot(cluster, key: str) -> tuple[int, int]:
    """Move the slot of ``key`` to another primary, key by key, as ``redis-cli --cluster
    reshard`` does (IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE everywhere); returns the
    (source, destination) ports."""
    source = cluster.primary_for(key)
    target = next(n for n in cluster.primaries() if n is not source)
    slot = source.client().execute_command("CLUSTER", "KEYSLOT", key)
    source_id = source.client().execute_command("CLUSTER", "MYID")
    target_id = target.client().execute_command("CLUSTER", "MYID")
    target.cli("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    source.cli("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    while True:
        keys = source.client().execute_command("CLUSTER", "GETKEYSINSLOT", slot, 10)
        if not keys:
            break
        for k in keys:  # one at a time, slowly: traffic keeps hitting the slot meanwhile
            source.client().execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", k)
            time.sleep(0.2)
    for node in cluster.primaries():
        node.cli("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    return source.port, target.port


async def test_a_busy_channel_migrated_to_another_primary_mid_traffic(servers, js, own_redis_cluster):
    """The busy room's slot moves to another primary while 50 events/s are published to it:
    nothing acked is missing, nothing out of order, on the subscriber of the other node."""
    cluster = own_redis_cluster
    env = on_cluster(cluster.url, EVENTS_PER_SECOND="1000", EVENT_BURST="1000", MAX_INFLIGHT_EVENTS="500")
    n1, n2 = servers(env=env), servers(env=env)
    await js.connect("pub", n1.url + "/chat", transports=["websocket"])
    await js.connect("sub", n2.url + "/chat", transports=["websocket"])
    for name in ("pub", "sub"):
        assert (await js.emit(name, "join", {"room": "busy"}))["ok"]
    acked: list[str] = []

    async def send(i: int) -> None:
        for _ in range(20):  # an application's retries, same eventId
            try:
                ack = await js.emit("pub", "message", {"room": "busy", "text": f"m{i}", "eventId": f"e{i}"},
                                    timeout=3000)
            except AssertionError:
                ack = None
            if ack and ack.get("ok"):
                acked.append(f"m{i}")
                return
            await asyncio.sleep(0.2)

    stop = asyncio.Event()
    task = asyncio.create_task(send_at_50_per_second(send, stop))
    try:
        await asyncio.sleep(1.0)
        began = asyncio.get_running_loop().time()
        source, target = await asyncio.to_thread(migrate_slot, cluster, "rt:{/chat|room:busy}:meta")
        migrating = asyncio.get_running_loop().time() - began
        await asyncio.sleep(1.5)
    finally:
        stop.set()
        sent = await task
    assert cluster.primary_for("rt:{/chat|room:busy}:meta").port == target != source
    print(f"\nslot migrated in {migrating:.1f} s while {sent} events were published ({len(acked)} acked)")
    assert migrating > 1.0  # the traffic really ran into the migration
    assert sorted(acked, key=lambda t: int(t[1:])) == [f"m{i}" for i in range(sent)]  # every one acked, once
    events = await js.wait("sub", "message", sent, timeout=20000)
    await asyncio.sleep(0.5)
    events = await js.events("sub", "message")
    await js.connect("reader", n2.url + "/chat", transports=["websocket"])
    stored = await read_room(js, "reader", "busy")
    assert sorted(stored) == sorted(acked) and len(stored) == sent
    assert_exactly_once_in_order(events, stored)  # the channel's order, each once
