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
