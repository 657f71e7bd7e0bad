"""One test suite for each store interface, run against the memory and the Redis implementation."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from server.idempotency import PENDING, TOO_LARGE, MemoryIdempotencyStore, RedisIdempotencyStore, wait_for_ack
from server.pending import MemoryPendingDeliveries, PendingMessage, RedisPendingDeliveries
from server.presence import Member, MemoryPresenceRegistry, RedisPresenceRegistry
from server.sessions import MemorySessionStore, RedisSessionStore, SavedSession


@pytest.fixture(params=["memory", "redis"])
async def kind(request, redis_url):
    clients = []

    def client():
        c = aioredis.from_url(redis_url)
        clients.append(c)
        return c

    yield request.param, client
    for c in clients:
        await c.aclose()


# ---------------------------------------------------------------------- sessions


def make(kind, memory_cls, redis_cls):
    name, client = kind
    return memory_cls() if name == "memory" else redis_cls(client(), "t")


async def test_sessions_are_taken_once_and_expire(kind):
    store = make(kind, MemorySessionStore, RedisSessionStore)
    s = SavedSession(sid="S", pid="P", namespace="/chat", data={"k": 1},
                     positions={"/chat": (0, ""), "/chat|room:a": (5, "e"), "/chat|S": (0, "")},
                     trail=[("/chat|room:a", 6), ("/chat|S", 1), ("/chat|room:a", 7)])
    await store.save(s, 10)
    got = await store.take("P")
    assert got == s
    assert await store.take("P") is None
    await store.save_many([SavedSession("S2", "P2", "/chat", {}, {"/chat": (3, "e")})], 0.2)
    await asyncio.sleep(0.35)
    assert await store.take("P2") is None


async def test_malformed_session_records_are_ignored(redis_url):
    client = aioredis.from_url(redis_url)
    store = RedisSessionStore(client, "t")
    for junk in (b"\x93not-a-map", b"\x81\xa3sid\x01", b"garbage"):
        await client.set("t:session:P", junk)
        assert await store.take("P") is None
    await client.aclose()


# ---------------------------------------------------------------------- idempotency


async def test_idempotency_claim_complete_duplicate(kind):
    store = make(kind, MemoryIdempotencyStore, RedisIdempotencyStore)
    assert await store.claim("k", 10) == (True, None)
    fresh, ack = await store.claim("k", 10)
    assert not fresh and ack is PENDING
    await store.complete("k", {"ok": True, "n": 1}, 10)
    assert await store.claim("k", 10) == (False, {"ok": True, "n": 1})
    await store.release("k")
    assert await store.claim("k", 10) == (True, None)


async def test_idempotency_waits_for_a_running_first_copy(kind):
    store = make(kind, MemoryIdempotencyStore, RedisIdempotencyStore)
    await store.claim("k", 10)

    async def finish():
        await asyncio.sleep(0.1)
        await store.complete("k", "done", 10)

    asyncio.create_task(finish())
    assert await wait_for_ack(store, "k", 10, bound=3) == (False, "done")


# ---------------------------------------------------------------------- presence


async def test_presence_per_user_across_connections(kind):
    reg = make(kind, MemoryPresenceRegistry, RedisPresenceRegistry)
    alice = Member("alice", "Alice")
    assert await reg.join("/chat", "r", "s1", alice, 10) is True
    assert await reg.join("/chat", "r", "s2", alice, 10) is False
    assert await reg.join("/chat", "r", "s3", Member("bob", "Bob"), 10) is True
    assert [m.user for m in await reg.members("/chat", "r")] == ["alice", "bob"]
    assert await reg.leave("/chat", "r", "s1") is None
    assert await reg.leave("/chat", "r", "s2") == alice
    assert [m.user for m in await reg.members("/chat", "r")] == ["bob"]
    assert await reg.leave("/chat", "r", "nobody") is None


async def test_presence_entries_lapse_without_heartbeat(kind):
    reg = make(kind, MemoryPresenceRegistry, RedisPresenceRegistry)
    await reg.join("/chat", "r", "s1", Member("dead", "Dead"), 0.2)
    await reg.join("/chat", "r", "s2", Member("alive", "Alive"), 0.2)
    await asyncio.sleep(0.1)
    await reg.refresh("/chat", [("r", "s2")], 10)
    await asyncio.sleep(0.2)
    assert [m.user for m in await reg.members("/chat", "r")] == ["alive"]
    gone = await reg.expire("/chat")
    assert [(room, m.user) for room, m in gone] == [("r", "dead")]
    assert await reg.expire("/chat") == []


# ---------------------------------------------------------------------- pending deliveries


async def test_pending_until_acked(kind):
    box = make(kind, MemoryPendingDeliveries, RedisPendingDeliveries)
    now = time.time()
    await box.add("u", PendingMessage("m1", "dm", {"text": "a"}, now - 1), 60)
    await box.add("u", PendingMessage("m2", "dm", {"text": "b"}, now), 60)
    assert [m.id for m in await box.pending("u", 60)] == ["m1", "m2"]
    assert await box.ack("u", ["m1", "zzz"]) == 1
    assert [m.payload for m in await box.pending("u", 60)] == [{"text": "b"}]
    await box.add("u", PendingMessage("old", "dm", {}, now - 100), 60)
    assert [m.id for m in await box.pending("u", 60)] == ["m2"]


# ---------------------------------------------------------------------- bounds (issue 12)
#
# Every store is bounded in count or bytes and in age, whether or not anyone reads it or is
# online: the memory implementation's size() and the Redis database's DBSIZE must both come
# back down. Reading something that does not exist stores nothing.


async def held(kind, store) -> int:
    """What ``store`` holds: entries of the memory implementation, keys of the Redis one."""
    name, client = kind
    if name == "memory":
        return store.size()
    c = client()
    return int(await c.dbsize())


async def test_idempotency_keeps_large_replies_as_a_marker(kind):
    name, client = kind
    store = (MemoryIdempotencyStore(max_reply_bytes=1024) if name == "memory"
             else RedisIdempotencyStore(client(), "t", max_reply_bytes=1024))
    await store.claim("big", 10)
    await store.complete("big", {"ok": True, "messages": ["x" * 100] * 50}, 10)
    assert await store.claim("big", 10) == (False, TOO_LARGE)
    await store.claim("small", 10)
    await store.complete("small", {"ok": True, "n": 1}, 10)
    assert await store.claim("small", 10) == (False, {"ok": True, "n": 1})


async def test_memory_idempotency_is_bounded_in_bytes():
    store = MemoryIdempotencyStore(max_reply_bytes=4096, max_bytes=64 * 1024)
    for i in range(1000):
        await store.claim(f"k{i}", 60)
        await store.complete(f"k{i}", {"ok": True, "blob": "x" * 1000}, 60)
    assert store.size_bytes() <= 64 * 1024
    assert await store.claim("k999", 60) == (False, {"ok": True, "blob": "x" * 1000})
    assert (await store.claim("k0", 60))[0] is True  # the oldest made room


async def test_idempotency_entries_expire_without_claims(kind):
    name, client = kind
    store = make(kind, MemoryIdempotencyStore, RedisIdempotencyStore)
    for i in range(10):
        await store.claim(f"k{i}", 0.2)
        await store.complete(f"k{i}", {"ok": True}, 0.2)
    await asyncio.sleep(0.35)
    await store.sweep()
    assert await held(kind, store) == 0


async def test_pending_expire_whether_or_not_anyone_reads_them(kind):
    box = make(kind, MemoryPendingDeliveries, RedisPendingDeliveries)
    await box.add("ghost", PendingMessage("m1", "dm", {}, time.time()), 0.3)
    await asyncio.sleep(0.2)
    await box.add("ghost", PendingMessage("m2", "dm", {}, time.time()), 0.3)
    await asyncio.sleep(0.2)
    await box.sweep(0.3)  # m1 is past direct_ttl, m2 is not: only m2 is still stored
    if kind[0] == "memory":
        assert box.size() == 1
    else:
        assert int(await kind[1]().hlen("t:pending:ghost")) == 1
    assert [m.id for m in await box.pending("ghost", 0.3)] == ["m2"]
    await asyncio.sleep(0.2)
    await box.sweep(0.3)
    assert await held(kind, box) == 0


async def test_pending_are_bounded_per_user(kind):
    name, client = kind
    box = (MemoryPendingDeliveries(max_per_user=3) if name == "memory"
           else RedisPendingDeliveries(client(), "t", max_per_user=3))
    now = time.time()
    assert [await box.add("u", PendingMessage(f"m{i}", "dm", {}, now), 60) for i in range(4)] == \
        [True, True, True, False]
    assert await box.add("other", PendingMessage("o", "dm", {}, now), 60) is True
    assert await box.ack("u", ["m0"]) == 1
    assert await box.add("u", PendingMessage("m4", "dm", {}, now), 60) is True
    assert sorted(m.id for m in await box.pending("u", 60)) == ["m1", "m2", "m4"]


# ---------------------------------------------------------------------- operator sessions, game lobby

from server.game_lobby import LobbyFull, MemoryGameLobbyStore, RedisGameLobbyStore  # noqa: E402
from server.operator_sessions import MemoryOperatorSessionStore, RedisOperatorSessionStore  # noqa: E402


def make_operator_sessions(kind, max_sessions=10_000):
    name, client = kind
    return MemoryOperatorSessionStore(max_sessions) if name == "memory" else RedisOperatorSessionStore(client(), "t")


def make_lobby(kind, max_games=1000):
    name, client = kind
    return MemoryGameLobbyStore(max_games) if name == "memory" else RedisGameLobbyStore(client(), "t", max_games)


async def test_operator_sessions_are_recalled_until_they_expire(kind):
    store = make_operator_sessions(kind)
    await store.remember("s1", "admin", 0.3)
    await store.remember("s2", "readonly", 60)
    assert await store.recall("s1") == "admin" and await store.recall("s2") == "readonly"
    assert await store.recall("nope") is None
    await asyncio.sleep(0.4)
    assert await store.recall("s1") is None and await store.recall("s2") == "readonly"


async def test_memory_operator_sessions_are_bounded_in_count():
    store = MemoryOperatorSessionStore(max_sessions=3)
    for i in range(10):
        await store.remember(f"s{i}", "admin", 60)
    assert store.size() == 3
    assert [await store.recall(f"s{i}") for i in (6, 7, 8, 9)] == [None, "admin", "admin", "admin"]


async def test_a_role_redis_holds_that_is_not_a_role_is_not_trusted(redis_url):
    client = aioredis.from_url(redis_url)
    try:
        await client.set("t:admin-session:forged", "root")
        assert await RedisOperatorSessionStore(client, "t").recall("forged") is None
    finally:
        await client.aclose()


async def test_lobby_lists_live_games_in_order_and_forgets_them_after_their_ttl(kind):
    lobby = make_lobby(kind)
    await lobby.put("b", {"id": "b", "node": "n1"}, 60)
    await lobby.put("a", {"id": "a", "node": "n2"}, 0.3)
    assert [g["id"] for g in await lobby.games()] == ["a", "b"]
    assert (await lobby.get("a"))["node"] == "n2"
    await asyncio.sleep(0.4)  # a's node stopped refreshing it (it died)
    assert [g["id"] for g in await lobby.games()] == ["b"] and await lobby.get("a") is None
    await lobby.put("b", {"id": "b", "node": "n1", "state": "playing"}, 60)  # a refresh replaces
    assert (await lobby.get("b"))["state"] == "playing"
    await lobby.remove("b")
    assert await lobby.games() == [] and await lobby.get("b") is None


async def test_lobby_is_bounded_in_count(kind):
    lobby = make_lobby(kind, max_games=2)
    await lobby.put("a", {"id": "a"}, 60)
    await lobby.put("b", {"id": "b"}, 60)
    with pytest.raises(LobbyFull):
        await lobby.put("c", {"id": "c"}, 60)
    await lobby.put("a", {"id": "a", "players": 2}, 60)  # refreshing a listed game is fine
    await lobby.remove("b")
    await lobby.put("c", {"id": "c"}, 60)
    assert [g["id"] for g in await lobby.games()] == ["a", "c"]


async def test_garbage_in_the_redis_lobby_is_dropped(redis_url):
    client = aioredis.from_url(redis_url)
    try:
        await client.hset("t:games", "junk", b"\xc1not msgpack")
        lobby = RedisGameLobbyStore(client, "t")
        assert await lobby.games() == [] and await lobby.get("junk") is None
        assert await client.hlen("t:games") == 0
    finally:
        await client.aclose()
