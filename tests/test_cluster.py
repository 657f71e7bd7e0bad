"""Several nodes on Redis, behind a plain round-robin nginx with no affinity: a client cannot
tell how many nodes there are or which one it reached."""

from __future__ import annotations

import asyncio

import pytest

from harness import Nginx


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


async def test_polling_clients_through_round_robin_without_affinity(servers, js, redis_url, nginx):
    env = {"REDIS_URL": redis_url}
    n1, n2 = servers(env=env), servers(env=env)
    lb = nginx([n1.port, n2.port])
    names = [f"c{i}" for i in range(4)]
    for name in names:
        state = await js.connect(name, lb.url + "/chat", transports=["polling"],
                                 extraHeaders={"Origin": f"http://127.0.0.1:{lb.port}"})
        assert state["connected"], state
        assert (await js.emit(name, "join", {"room": "r"}))["ok"]
    for i in range(10):
        for name in names:
            assert (await js.emit(name, "message", {"room": "r", "text": f"{name}-{i}"}))["ok"]
    for name in names:
        events = await js.wait(name, "message", 40, timeout=15000)
        assert sorted(e["args"][0]["text"] for e in events) == sorted(f"{n}-{i}" for n in names for i in range(10))
        state = await js.state(name)
        # no "Invalid session", no reconnect: every request found its session
        assert state["connects"] == 1 and state["disconnects"] == [] and state["errors"] == [], state
    # both nodes really served requests
    for node in (n1, n2):
        _, body = node.get("/metrics")
        assert "rt_bytes_in_total" in body


async def test_default_client_upgrades_through_any_node(servers, js, redis_url, nginx):
    env = {"REDIS_URL": redis_url}
    n1, n2 = servers(env=env), servers(env=env)
    lb = nginx([n1.port, n2.port])
    for name in ("a", "b"):
        await js.connect(name, lb.url + "/chat")
        await js.emit(name, "join", {"room": "r"})
    for _ in range(50):
        states = [await js.state(n) for n in ("a", "b")]
        if all(s["transport"] == "websocket" for s in states):
            break
        await asyncio.sleep(0.1)
    assert all(s["transport"] == "websocket" for s in states), states
    await js.emit("a", "message", {"room": "r", "text": "over websocket"})
    [event] = await js.wait("b", "message", 1)
    assert event["args"][0]["text"] == "over websocket"
    assert (await js.state("a"))["connects"] == 1


async def test_broadcast_reaches_members_on_every_node(servers, js, redis_url):
    env = {"REDIS_URL": redis_url}
    nodes = [servers(env=env) for _ in range(3)]
    for i, node in enumerate(nodes):
        await js.connect(f"c{i}", node.url + "/chat", transports=["websocket" if i % 2 else "polling"])
        await js.emit(f"c{i}", "join", {"room": "r"})
    for i in range(3):
        await js.emit(f"c{i}", "message", {"room": "r", "text": f"from node {i}"})
    for i in range(3):
        events = await js.wait(f"c{i}", "message", 3)
        texts = [e["args"][0]["text"] for e in events]
        assert texts == ["from node 0", "from node 1", "from node 2"]  # same order everywhere
    # volatile events cross nodes too
    await js.send("c0", "typing", {"room": "r", "typing": True})
    for i in (1, 2):
        await js.wait(f"c{i}", "typing", 1)


async def test_presence_is_corrected_when_a_node_dies(servers, js, redis_url):
    env = {"REDIS_URL": redis_url, "PRESENCE_TTL": "1.5"}
    n1, n2 = servers(env=env), servers(env=env)
    await js.connect("doomed", n1.url + "/chat", transports=["websocket"], reconnection=False)
    await js.connect("survivor", n2.url + "/chat", transports=["websocket"])
    doomed = await js.emit("doomed", "whoami")
    for name in ("doomed", "survivor"):
        await js.emit(name, "join", {"room": "r"})
    assert len((await js.emit("survivor", "presence", {"room": "r"}))["members"]) == 2
    before = len(await js.events("survivor", "presence"))
    n1.kill()
    events = await js.wait("survivor", "presence", before + 1, timeout=10000)
    leave = events[-1]["args"][0]
    assert leave["action"] == "leave" and leave["user"] == doomed["user"]
    members = (await js.emit("survivor", "presence", {"room": "r"}))["members"]
    survivor = await js.emit("survivor", "whoami")
    assert [m["user"] for m in members] == [survivor["user"]]


async def test_redis_restart_mid_traffic_loses_no_durable_event(servers, js, own_redis):
    from harness import RedisServer

    own_redis.stop()
    redis = RedisServer(port=own_redis.port, appendonly=True).start()
    try:
        env = {"REDIS_URL": redis.url}
        n1, n2 = servers(env=env), servers(env=env)
        await js.connect("sub", n2.url + "/chat", transports=["websocket"])
        await js.connect("pub", n1.url + "/chat", transports=["websocket"])
        for name in ("sub", "pub"):
            await js.emit(name, "join", {"room": "r"})
        sent = []
        for i in range(30):
            if i == 10:
                redis.restart()
            for attempt in range(100):  # an app that retries with the same eventId
                try:
                    ack = await js.emit("pub", "message", {"room": "r", "text": f"m{i}", "eventId": f"e{i}"},
                                        timeout=2000)
                except AssertionError:
                    ack = None
                if ack and ack.get("ok"):
                    sent.append(f"m{i}")
                    break
                await asyncio.sleep(0.1)
        assert sent == [f"m{i}" for i in range(30)]
        events = await js.wait("sub", "message", 30, timeout=15000)
        texts = [e["args"][0]["text"] for e in events]
        assert texts == sent, texts
        for node in (n1, n2):
            for _ in range(50):
                if node.get("/readyz")[0] == 200:
                    break
                await asyncio.sleep(0.1)
            assert node.get("/readyz")[0] == 200  # recovered by themselves
    finally:
        redis.cleanup()


async def test_redis_sentinel_url(servers, js, own_redis, tmp_path):
    import subprocess

    from harness import free_port, wait_port

    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                    f"sentinel monitor mymaster 127.0.0.1 {own_redis.port} 1\n")
    sentinel = subprocess.Popen(["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        env = {"REDIS_URL": f"redis+sentinel://127.0.0.1:{port}/mymaster/0"}
        n1, n2 = servers(env=env), servers(env=env)
        await js.connect("a", n1.url + "/chat", transports=["websocket"])
        await js.connect("b", n2.url + "/chat", transports=["websocket"])
        for name in ("a", "b"):
            await js.emit(name, "join", {"room": "r"})
        await js.emit("a", "message", {"room": "r", "text": "via sentinel"})
        [event] = await js.wait("b", "message", 1)
        assert event["args"][0]["text"] == "via sentinel"
        assert own_redis.cli("XLEN", "rt:{/chat|room:r}:stream") != "0"  # the data went to the monitored master
    finally:
        sentinel.terminate()
        sentinel.wait(5)
