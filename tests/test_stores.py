"""One contract suite for each store interface, run against the memory implementation, the
Redis implementation on one Redis, on a real Redis Cluster (3 primaries, 3 replicas) and on
three independent Redis instances sharded by hash tag (``redis+shards://``): the four must
behave the same. (The event log tests at the top run on
memory and one Redis only.)"""

from __future__ import annotations

import asyncio
import time

import pytest

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import MaxConnectionsError

from server.cluster_client import BoundedRedisCluster
from server.documents import MemoryDocumentStore, RedisDocumentStore
from server.game_lobby import LobbyFull, MemoryGameLobbyStore, RedisGameLobbyStore
from server.idempotency import PENDING, TOO_LARGE, MemoryIdempotencyStore, RedisIdempotencyStore, wait_for_ack
from server.login_throttle import MemoryLoginThrottle, RedisLoginThrottle
from server.operator_sessions import MemoryOperatorSessionStore, RedisOperatorSessionStore
from server.pending import MemoryPendingDeliveries, PendingMessage, RedisPendingDeliveries
from server.presence import Member, MemoryPresenceRegistry, RedisPresenceRegistry
from server.sessions import MemorySessionStore, RedisSessionStore, SavedSession
from realtime_channels.sharded_redis import ShardedRedis
from server.stores import RedisProbeError, is_cluster, redis_client


# ---------------------------------------------------------------------- bounds (issue 12)
#
# Every store is bounded in count or bytes and in age, whether or not anyone reads it or is
# online: the memory implementation's size() and the Redis database's DBSIZE must both come
# back down. Reading something that does not exist stores nothing.


# ====================================================================== the store contract


class Backend:
    """Makes stores of one kind (memory, redis, cluster, shards) and looks at what they hold.

    Redis clients come from :func:`server.stores.redis_client`, the server's own factory: on
    the cluster kind it has to recognise the plain ``redis://`` URL of one node as a cluster.
    """

    def __init__(self, name: str, url: str | None) -> None:
        self.name = name
        self.url = url
        self.clients: list = []

    @property
    def redis(self) -> bool:
        return self.name != "memory"

    def client(self):
        c = redis_client(self.url)
        assert isinstance(c, BoundedRedisCluster) == (self.name == "cluster")
        assert isinstance(c, ShardedRedis) == (self.name == "shards")
        self.clients.append(c)
        return c

    def make(self, memory_factory, redis_factory):
        """``memory_factory()`` or ``redis_factory(client, prefix)``."""
        return memory_factory() if self.name == "memory" else redis_factory(self.client(), "t")

    async def held(self, store) -> int:
        """What ``store`` holds: entries of the memory implementation, keys in Redis."""
        if self.name == "memory":
            return store.size()
        c = self.clients[0] if self.clients else self.client()
        if self.name == "cluster":
            return int(await c.dbsize(target_nodes=RedisCluster.PRIMARIES))
        return int(await c.dbsize())  # summed over the instances with shards

    async def close(self) -> None:
        for c in self.clients:
            await c.aclose()


URL_FIXTURES = {"redis": "redis_url", "cluster": "cluster_url", "shards": "shards_url"}


@pytest.fixture(params=["memory", "redis", "cluster", "shards"])
async def backend(request):
    url = None if request.param == "memory" else request.getfixturevalue(URL_FIXTURES[request.param])
    b = Backend(request.param, url)
    yield b
    await b.close()


@pytest.fixture(params=["redis", "cluster", "shards"])
async def redis_backend(request):
    """The Redis kinds only: for what only Redis can hold (garbage written by someone else)."""
    b = Backend(request.param, request.getfixturevalue(URL_FIXTURES[request.param]))
    yield b
    await b.close()


# ---------------------------------------------------------------------- sessions


def sessions(backend):
    return backend.make(MemorySessionStore, RedisSessionStore)


def saved(pid: str, rooms: list[str] | None = None) -> SavedSession:
    """A session in ``rooms`` (each at offset 5 of epoch "e") with a short trail."""
    positions = {"/chat": (0, ""), f"/chat|S{pid}": (0, ""), **{f"/chat|{r}": (5, "e") for r in rooms or []}}
    trail = [(f"/chat|{r}", 6) for r in rooms or []] + [(f"/chat|S{pid}", 1)]
    return SavedSession(sid="S" + pid, pid=pid, namespace="/chat", data={"k": 1}, positions=positions,
                        trail=trail)


async def test_sessions_are_taken_once_and_expire(backend):
    store = sessions(backend)
    s = saved("P", ["room:a"])
    await store.save(s, 10)
    assert await store.take("P") == s
    assert await store.take("P") is None
    await store.save_many([saved("P2")], 0.2)
    await asyncio.sleep(0.35)
    assert await store.take("P2") is None


async def test_a_session_saved_again_replaces_the_first_and_restarts_its_ttl(backend):
    store = sessions(backend)
    await store.save(saved("P", ["a"]), 0.3)
    await asyncio.sleep(0.2)
    await store.save(saved("P", ["a", "b"]), 0.3)
    await asyncio.sleep(0.2)
    assert (await store.take("P")) == saved("P", ["a", "b"])


async def test_save_many_saves_each_and_nothing_for_none(backend):
    store = sessions(backend)
    await store.save_many([], 10)
    # pids chosen to land in different cluster slots: the heartbeat's batch crosses nodes
    pids = [f"pid-{i}" for i in range(20)]
    await store.save_many([saved(p) for p in pids], 10)
    assert [(await store.take(p)).pid for p in pids] == pids


async def test_malformed_session_records_are_ignored(redis_backend):
    store = sessions(redis_backend)
    client = redis_backend.clients[0]
    for junk in (b"\x93not-a-map", b"\x81\xa3sid\x01", b"garbage"):
        await client.set("t:session:P", junk)
        assert await store.take("P") is None


async def test_the_session_saves_and_takes_of_one_turn_reach_redis_as_one_pipeline(redis_url):
    """Saves (a connect storm's batch, the sockets a closing node ends at once) and takes of
    one loop turn go through the store's command batcher: one connection, not one per command
    (sent alone, thirty concurrent saves take thirty), and each still gets its own reply."""
    import redis.asyncio as aioredis

    client, observer = redis_client(redis_url), aioredis.Redis.from_url(redis_url)
    store = RedisSessionStore(client, "t")

    async def received() -> int:
        return int((await observer.info("stats"))["total_connections_received"])

    before = await received()
    await asyncio.gather(*(store.save(saved(f"P{i}", ["a"]), 10) for i in range(30)),
                         store.save_many([saved(f"M{i}") for i in range(10)], 10))
    taken = await asyncio.gather(*(store.take(f"P{i}") for i in range(30)), store.take("M3"), store.take("none"))
    assert await received() - before == 1
    assert taken[:30] == [saved(f"P{i}", ["a"]) for i in range(30)]
    assert taken[30] == saved("M3") and taken[31] is None
    assert 0 < await observer.pttl("t:session:M4") <= 10_000
    await client.aclose()
    await observer.aclose()


# ---------------------------------------------------------------------- idempotency


def dedupe(backend, max_reply_bytes=16_384):
    return backend.make(lambda: MemoryIdempotencyStore(max_reply_bytes),
                        lambda c, p: RedisIdempotencyStore(c, p, max_reply_bytes))


async def test_idempotency_claim_complete_duplicate(backend):
    store = dedupe(backend)
    assert await store.claim("k", 10) == (True, None)
    fresh, ack = await store.claim("k", 10)
    assert not fresh and ack is PENDING
    await store.complete("k", {"ok": True, "n": 1}, 10)
    assert await store.claim("k", 10) == (False, {"ok": True, "n": 1})
    await store.release("k")
    assert await store.claim("k", 10) == (True, None)
    await store.release("never-claimed")  # a no-op
    await store.complete("unclaimed", [1, 2], 10)  # kept all the same
    assert await store.claim("unclaimed", 10) == (False, [1, 2])


async def test_idempotency_waits_for_a_running_first_copy(backend):
    store = dedupe(backend)
    await store.claim("k", 10)

    async def finish():
        await asyncio.sleep(0.1)
        await store.complete("k", "done", 10)

    task = asyncio.create_task(finish())
    assert await wait_for_ack(store, "k", 10, bound=3) == (False, "done")
    await task


async def test_idempotency_claims_and_acks_lapse_after_their_ttl(backend):
    store = dedupe(backend)
    await store.claim("claimed", 0.2)
    await store.claim("done", 10)
    await store.complete("done", "ack", 0.2)  # the ack's own ttl counts from now
    await asyncio.sleep(0.3)
    assert await store.claim("claimed", 10) == (True, None)
    assert await store.claim("done", 10) == (True, None)


async def test_concurrent_claims_of_one_id_have_one_winner(backend):
    store = dedupe(backend)
    results = await asyncio.gather(*(store.claim("k", 10) for _ in range(20)))
    assert sorted(fresh for fresh, _ in results) == [False] * 19 + [True]


async def test_a_claim_reported_as_won_is_stored(redis_backend):
    """An entry expiring between SET NX and GET once made claim() report a claim it never
    stored (a second copy could then claim too)."""
    store = dedupe(redis_backend)
    client = redis_backend.clients[0]
    for i in range(300):
        key = f"k{i}"
        await client.set(f"t:dedupe:{key}", PENDING, px=1)
        await asyncio.sleep(0.0008)
        fresh, _ = await store.claim(key, 10)
        if fresh:
            assert await client.get(f"t:dedupe:{key}") == PENDING, f"claim {i} won but stored nothing"


async def test_idempotency_keeps_large_replies_as_a_marker(backend):
    store = dedupe(backend, max_reply_bytes=1024)
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


async def test_idempotency_entries_expire_without_claims(backend):
    store = dedupe(backend)
    for i in range(10):
        await store.claim(f"k{i}", 0.2)
        await store.complete(f"k{i}", {"ok": True}, 0.2)
    await asyncio.sleep(0.35)
    await store.sweep()
    assert await backend.held(store) == 0


# ---------------------------------------------------------------------- presence


def presence(backend):
    return backend.make(MemoryPresenceRegistry, RedisPresenceRegistry)


ALICE, BOB = Member("alice", "Alice"), Member("bob", "Bob")


async def test_presence_per_user_across_connections(backend):
    reg = presence(backend)
    assert await reg.join("/chat", "r", "s1", ALICE, 10) is True
    assert await reg.join("/chat", "r", "s2", ALICE, 10) is False
    assert await reg.join("/chat", "r", "s3", BOB, 10) is True
    assert await reg.members("/chat", "r") == [ALICE, BOB]
    assert await reg.leave("/chat", "r", "s1") is None
    assert await reg.leave("/chat", "r", "s2") == ALICE
    assert await reg.members("/chat", "r") == [BOB]
    assert await reg.leave("/chat", "r", "nobody") is None
    assert await reg.leave("/chat", "r", "s2") is None  # twice: reported once


async def test_presence_rooms_and_namespaces_are_separate(backend):
    reg = presence(backend)
    await reg.join("/chat", "r", "s1", ALICE, 10)
    await reg.join("/chat", "q", "s2", BOB, 10)
    await reg.join("/game", "r", "s3", BOB, 10)
    assert await reg.members("/chat", "r") == [ALICE]
    assert await reg.members("/chat", "q") == [BOB]
    assert await reg.members("/game", "r") == [BOB]
    assert await reg.members("/chat", "none") == []


async def test_presence_members_are_sorted_by_user_id(backend):
    reg = presence(backend)
    for i, user in enumerate(["zoe", "adam", "mia", "bob"]):
        await reg.join("/chat", "r", f"s{i}", Member(user, user.upper()), 10)
    assert [m.user for m in await reg.members("/chat", "r")] == ["adam", "bob", "mia", "zoe"]


async def test_presence_name_is_the_latest_joins(backend):
    """Redis once took the name of the entry expiring last, memory the one inserted last."""
    reg = presence(backend)
    await reg.join("/chat", "r", "s1", Member("alice", "Old name"), 60)
    await reg.join("/chat", "r", "s2", Member("alice", "New name"), 10)
    assert await reg.members("/chat", "r") == [Member("alice", "New name")]


async def test_presence_entries_lapse_without_heartbeat(backend):
    reg = presence(backend)
    await reg.join("/chat", "r", "s1", Member("dead", "Dead"), 0.2)
    await reg.join("/chat", "r", "s2", Member("alive", "Alive"), 0.2)
    await asyncio.sleep(0.1)
    await reg.refresh("/chat", [("r", "s2"), ("r", "unknown")], 10)
    await asyncio.sleep(0.2)
    assert [m.user for m in await reg.members("/chat", "r")] == ["alive"]
    gone = await reg.expire("/chat")
    assert [(room, m.user) for room, m in gone] == [("r", "dead")]
    assert await reg.expire("/chat") == []
    assert await reg.leave("/chat", "r", "unknown") is None  # refresh created nothing


async def test_a_lapsed_entry_is_absent_when_its_user_joins_again(backend):
    """Memory once counted a lapsed entry as present: the user's return was not announced."""
    reg = presence(backend)
    await reg.join("/chat", "r", "s1", ALICE, 0.2)
    await asyncio.sleep(0.3)
    assert await reg.members("/chat", "r") == []
    assert await reg.join("/chat", "r", "s2", ALICE, 10) is True
    assert await reg.expire("/chat") == []  # alice is back: her lapsed entry goes quietly
    assert await reg.members("/chat", "r") == [ALICE]


async def test_a_user_whose_other_entry_lapsed_leaves_once(backend):
    """Leaving the last live connection announces the departure; the lapsed entry that is
    left must not announce it a second time (Redis did), nor hold it back (memory did)."""
    reg = presence(backend)
    await reg.join("/chat", "r", "live", ALICE, 60)
    await reg.join("/chat", "r", "lapsing", ALICE, 0.2)
    await asyncio.sleep(0.3)
    assert await reg.leave("/chat", "r", "live") == ALICE
    assert await reg.expire("/chat") == []
    assert await reg.members("/chat", "r") == []


async def test_a_user_with_several_lapsed_entries_is_reported_gone_once(backend):
    reg = presence(backend)
    for sid in ("s1", "s2", "s3"):
        await reg.join("/chat", "r", sid, ALICE, 0.2)
    await reg.join("/chat", "r", "b", BOB, 60)
    await asyncio.sleep(0.3)
    assert await reg.expire("/chat") == [("r", ALICE)]
    assert await reg.leave("/chat", "r", "s2") is None


async def test_presence_expiry_reports_are_sorted_by_room_then_user(backend):
    reg = presence(backend)
    for i, (room, user) in enumerate([("r2", "zed"), ("r1", "yan"), ("r2", "amy"), ("r1", "bo")]):
        await reg.join("/chat", room, f"s{i}", Member(user, user), 0.2)
    await asyncio.sleep(0.3)
    assert [(room, m.user) for room, m in await reg.expire("/chat")] == \
        [("r1", "bo"), ("r1", "yan"), ("r2", "amy"), ("r2", "zed")]


async def test_presence_holds_nothing_once_everyone_left(backend):
    reg = presence(backend)
    for i in range(10):
        await reg.join("/chat", f"room-{i % 3}", f"s{i}", Member(f"u{i}", "U"), 10 if i % 2 else 0.2)
    await asyncio.sleep(0.3)
    for i in range(1, 10, 2):
        await reg.leave("/chat", f"room-{i % 3}", f"s{i}")
    await reg.expire("/chat")  # the lapsed ones, and the index of rooms
    assert await backend.held(reg) == 0


async def test_presence_ignores_garbage_in_redis(redis_backend):
    reg = presence(redis_backend)
    client = redis_backend.clients[0]
    await reg.join("/chat", "r", "s1", ALICE, 10)
    exp, who, _ = reg._keys("/chat", "r")
    await client.zadd(exp, {"junk": time.time() + 10})
    await client.hset(who, "junk", b"\xff\xfe not utf-8")
    assert await reg.members("/chat", "r") == [ALICE]


# ---------------------------------------------------------------------- pending deliveries


def pending_box(backend, max_per_user=1000):
    return backend.make(lambda: MemoryPendingDeliveries(max_per_user),
                        lambda c, p: RedisPendingDeliveries(c, p, max_per_user))


async def test_pending_until_acked(backend):
    box = pending_box(backend)
    now = time.time()
    await box.add("u", PendingMessage("m1", "dm", {"text": "a"}, now - 1), 60)
    await box.add("u", PendingMessage("m2", "dm", {"text": "b"}, now), 60)
    assert [m.id for m in await box.pending("u", 60)] == ["m1", "m2"]
    assert await box.ack("u", ["m1", "zzz"]) == 1
    assert [m.payload for m in await box.pending("u", 60)] == [{"text": "b"}]
    await box.add("u", PendingMessage("old", "dm", {}, now - 100), 60)
    assert [m.id for m in await box.pending("u", 60)] == ["m2"]
    assert await box.ack("u", []) == 0 and await box.ack("nobody", ["m2"]) == 0
    assert await box.pending("nobody", 60) == []


async def test_pending_created_together_are_ordered_by_id(backend):
    """A hash has no order: Redis once returned ties in any order, memory in insertion order."""
    box = pending_box(backend)
    now = time.time()
    for mid in ("m3", "m1", "m2"):
        await box.add("u", PendingMessage(mid, "dm", {}, now), 60)
    await box.add("u", PendingMessage("m0", "dm", {}, now + 1), 60)
    assert [m.id for m in await box.pending("u", 60)] == ["m1", "m2", "m3", "m0"]


async def test_pending_added_again_replaces(backend):
    box = pending_box(backend, max_per_user=2)
    now = time.time()
    await box.add("u", PendingMessage("m1", "dm", {"v": 1}, now), 60)
    await box.add("u", PendingMessage("m2", "dm", {}, now), 60)
    assert await box.add("u", PendingMessage("m1", "dm", {"v": 2}, now), 60) is True  # at the bound: a retry is fine
    assert [(m.id, m.payload) for m in await box.pending("u", 60)] == [("m1", {"v": 2}), ("m2", {})]


async def test_pending_expire_whether_or_not_anyone_reads_them(backend):
    box = pending_box(backend)
    await box.add("ghost", PendingMessage("m1", "dm", {}, time.time()), 0.3)
    await asyncio.sleep(0.2)
    await box.add("ghost", PendingMessage("m2", "dm", {}, time.time()), 0.3)
    await asyncio.sleep(0.2)
    await box.sweep(0.3)  # m1 is past direct_ttl, m2 is not: only m2 is still stored
    if backend.redis:
        assert int(await backend.clients[0].hlen(box._keys("ghost")[0])) == 1
    else:
        assert box.size() == 1
    assert [m.id for m in await box.pending("ghost", 0.3)] == ["m2"]
    await asyncio.sleep(0.2)
    await box.sweep(0.3)
    assert await backend.held(box) == 0


async def test_pending_are_bounded_per_user(backend):
    box = pending_box(backend, max_per_user=3)
    now = time.time()
    assert [await box.add("u", PendingMessage(f"m{i}", "dm", {}, now), 60) for i in range(4)] == \
        [True, True, True, False]
    assert await box.add("other", PendingMessage("o", "dm", {}, now), 60) is True
    assert await box.ack("u", ["m0"]) == 1
    assert await box.add("u", PendingMessage("m4", "dm", {}, now), 60) is True
    assert sorted(m.id for m in await box.pending("u", 60)) == ["m1", "m2", "m4"]


async def test_pending_drops_garbage_in_redis(redis_backend):
    box = pending_box(redis_backend)
    await box.add("u", PendingMessage("m1", "dm", {}, time.time()), 60)
    await redis_backend.clients[0].hset(box._keys("u")[0], "junk", b"\xc1")
    assert [m.id for m in await box.pending("u", 60)] == ["m1"]
    assert await redis_backend.clients[0].hlen(box._keys("u")[0]) == 1


# ---------------------------------------------------------------------- documents


def documents(backend):
    return backend.make(MemoryDocumentStore, RedisDocumentStore)


async def test_documents_keep_a_snapshot_and_the_updates_after_it(backend):
    docs = documents(backend)
    assert await docs.load("d") == (None, [])
    assert [await docs.append("d", bytes([i])) for i in range(5)] == [1, 2, 3, 4, 5]
    assert await docs.load("d") == (None, [bytes([i]) for i in range(5)])
    await docs.compact("d", b"snap", 3)
    assert await docs.load("d") == (b"snap", [b"\x03", b"\x04"])
    assert await docs.append("d", b"\x05") == 3
    await docs.compact("d", b"all", 10)  # more than there are: everything merged
    assert await docs.load("d") == (b"all", [])
    assert await docs.load("other") == (None, [])


async def test_document_client_ids_are_bound_to_their_first_user(backend):
    docs = documents(backend)
    assert await docs.owners("d", [1, 2]) == {1: None, 2: None}
    assert await docs.claim("d", [1, 2], "alice") == {1: "alice", 2: "alice"}
    assert await docs.claim("d", [2, 3], "bob") == {2: "alice", 3: "bob"}
    assert await docs.owners("d", [1, 3, 4]) == {1: "alice", 3: "bob", 4: None}
    assert await docs.owners("other", [1]) == {1: None}
    assert await docs.claim("d", [], "bob") == {} and await docs.owners("d", []) == {}


async def test_concurrent_claims_of_a_client_id_have_one_winner(backend):
    docs = documents(backend)
    results = await asyncio.gather(*(docs.claim("d", [7], f"user{i}") for i in range(10)))
    assert len({r[7] for r in results}) == 1


# ---------------------------------------------------------------------- operator sessions


def operator_sessions(backend, max_sessions=10_000):
    return backend.make(lambda: MemoryOperatorSessionStore(max_sessions), RedisOperatorSessionStore)


async def test_operator_sessions_are_recalled_until_they_expire(backend):
    store = operator_sessions(backend)
    await store.remember("s1", "admin", 0.3)
    await store.remember("s2", "readonly", 60)
    assert await store.recall("s1") == "admin" and await store.recall("s2") == "readonly"
    assert await store.recall("nope") is None
    await asyncio.sleep(0.4)
    assert await store.recall("s1") is None and await store.recall("s2") == "readonly"


async def test_operator_sessions_refuse_a_role_that_is_not_one(backend):
    """Memory once kept any role and gave it back; Redis answered None for it."""
    store = operator_sessions(backend)
    with pytest.raises(ValueError):
        await store.remember("s", "root", 60)
    assert await store.recall("s") is None


async def test_memory_operator_sessions_are_bounded_in_count():
    store = MemoryOperatorSessionStore(max_sessions=3)
    for i in range(10):
        await store.remember(f"s{i}", "admin", 60)
    assert store.size() == 3
    assert [await store.recall(f"s{i}") for i in (6, 7, 8, 9)] == [None, "admin", "admin", "admin"]


async def test_a_role_redis_holds_that_is_not_a_role_is_not_trusted(redis_backend):
    store = operator_sessions(redis_backend)
    await redis_backend.clients[0].set("t:admin-session:forged", "root")
    assert await store.recall("forged") is None


# ---------------------------------------------------------------------- game lobby


def lobby(backend, max_games=1000):
    return backend.make(lambda: MemoryGameLobbyStore(max_games), lambda c, p: RedisGameLobbyStore(c, p, max_games))


async def test_lobby_lists_live_games_in_order_and_forgets_them_after_their_ttl(backend):
    games = lobby(backend)
    await games.put("b", {"id": "b", "node": "n1"}, 60)
    await games.put("a", {"id": "a", "node": "n2"}, 0.3)
    assert [g["id"] for g in await games.games()] == ["a", "b"]
    assert (await games.get("a"))["node"] == "n2"
    await asyncio.sleep(0.4)  # a's node stopped refreshing it (it died)
    assert [g["id"] for g in await games.games()] == ["b"] and await games.get("a") is None
    await games.put("b", {"id": "b", "node": "n1", "state": "playing"}, 60)  # a refresh replaces
    assert (await games.get("b"))["state"] == "playing"
    await games.remove("b")
    assert await games.games() == [] and await games.get("b") is None
    assert await backend.held(games) == 0


async def test_lobby_is_bounded_in_count(backend):
    games = lobby(backend, max_games=2)
    await games.put("a", {"id": "a"}, 60)
    await games.put("b", {"id": "b"}, 60)
    with pytest.raises(LobbyFull):
        await games.put("c", {"id": "c"}, 60)
    await games.put("a", {"id": "a", "players": 2}, 60)  # refreshing a listed game is fine
    await games.remove("b")
    await games.put("c", {"id": "c"}, 60)
    assert [g["id"] for g in await games.games()] == ["a", "c"]


async def test_lobby_expired_games_make_room(backend):
    games = lobby(backend, max_games=1)
    await games.put("a", {"id": "a"}, 0.2)
    await asyncio.sleep(0.3)
    await games.put("b", {"id": "b"}, 60)
    assert [g["id"] for g in await games.games()] == ["b"]


async def test_lobby_bound_holds_when_nodes_add_games_at_once(backend):
    """Redis once read the count, then wrote: nodes adding games together passed the bound."""
    games = lobby(backend, max_games=3)
    results = await asyncio.gather(*(games.put(f"g{i}", {"id": f"g{i}"}, 60) for i in range(10)),
                                   return_exceptions=True)
    assert sum(r is None for r in results) == 3
    assert all(isinstance(r, LobbyFull) for r in results if r is not None)
    assert len(await games.games()) == 3


async def test_garbage_in_the_redis_lobby_is_dropped(redis_backend):
    games = lobby(redis_backend)
    client = redis_backend.clients[0]
    await client.hset(games.key, "junk", b"\xc1not msgpack")
    assert await games.games() == [] and await games.get("junk") is None
    assert await client.hlen(games.key) == 0


# ---------------------------------------------------------------------- login throttle


def throttle(backend, attempts=3, lockout=0.4):
    return backend.make(lambda: MemoryLoginThrottle(attempts, lockout),
                        lambda c, p: RedisLoginThrottle(c, p, attempts, lockout))


async def test_login_failures_lock_a_key_for_the_lockout(backend):
    t = throttle(backend)
    assert [await t.reserve(["addr:1", "user:admin"]) for _ in range(3)] == [1, 2, 3]
    assert await t.reserve(["addr:1"]) is None  # locked: not counted
    assert await t.reserve(["addr:2", "user:admin"]) is None  # one locked key locks the attempt
    assert await t.reserve(["addr:2"]) == 1  # ... and counted nothing against the others
    await asyncio.sleep(0.5)
    assert await t.reserve(["addr:1", "user:admin"]) == 1


async def test_a_successful_login_gives_its_attempt_back(backend):
    t = throttle(backend)
    for _ in range(2):
        await t.reserve(["addr:1"])
        await t.release(["addr:1"])
    assert await t.reserve(["addr:1"]) == 1
    await t.release(["addr:never"])  # nothing to give back: a no-op
    assert await t.reserve(["addr:never"]) == 1


async def test_a_key_named_twice_is_counted_once(backend):
    """Redis once counted a repeated key twice, memory once."""
    t = throttle(backend)
    assert await t.reserve(["user:a", "user:a"]) == 1
    assert await t.reserve(["user:a"]) == 2


async def test_an_attempt_against_no_key_counts_nothing(backend):
    """Memory once answered 1, Redis 0."""
    t = throttle(backend)
    assert await t.reserve([]) == 0
    await t.release([])


# ====================================================================== cluster clients


def test_a_plain_url_to_a_single_redis_is_not_a_cluster(redis_url):
    assert is_cluster(redis_url) is False
    assert is_cluster("unix:///tmp/redis.sock") is False


async def test_a_plain_url_to_one_cluster_node_gives_a_working_cluster_client(redis_cluster, cluster_url):
    for node in redis_cluster.nodes[:2]:  # a primary and a replica alike
        url = f"redis://127.0.0.1:{node.port}"
        assert is_cluster(url)
        client = redis_client(url)
        try:
            assert isinstance(client, BoundedRedisCluster)
            keys = [f"k{i}" for i in range(30)]  # spread over every primary
            assert len({redis_cluster.primary_for(k).port for k in keys}) == 3
            for k in keys:
                await client.set(k, k)
            assert [await client.get(k) for k in keys] == [k.encode() for k in keys]
            async with client.pipeline(transaction=True) as pipe:  # one slot: a transaction works
                pipe.set("{t}a", 1)
                pipe.incr("{t}a")
                assert await pipe.execute() == [True, 2]
        finally:
            await client.aclose()


async def test_a_cluster_url_names_several_seeds(redis_cluster, cluster_url):
    dead = "127.0.0.1:1"  # a seed that is down is skipped
    seeds = ",".join([dead] + [f"127.0.0.1:{n.port}" for n in redis_cluster.nodes[:2]])
    client = redis_client(f"redis+cluster://{seeds}/0")
    try:
        assert isinstance(client, BoundedRedisCluster)
        await client.set("x", "1")
        assert await client.get("x") == b"1"
    finally:
        await client.aclose()


async def test_the_cluster_client_waits_for_a_connection_instead_of_failing(cluster_url):
    """redis-py's RedisCluster raises MaxConnectionsError at its cap; ours waits its turn."""
    raw = RedisCluster.from_url(cluster_url, max_connections=2)
    bounded = redis_client(cluster_url, max_connections=2)
    try:
        await raw.ping()
        with pytest.raises(MaxConnectionsError):
            await asyncio.gather(*(raw.incr("n") for _ in range(50)))
        await asyncio.gather(*(bounded.incr("m") for _ in range(200)))
        assert await bounded.get("m") == b"200"
        pipes = []
        for i in range(20):
            pipe = bounded.pipeline(transaction=False)
            pipe.incr("p").incr(f"q{i}")
            pipes.append(pipe.execute())
        await asyncio.gather(*pipes)
        assert await bounded.get("p") == b"20"
        node = bounded.get_node_from_key("m")
        assert len(node._connections) <= 2
    finally:
        await raw.aclose()
        await bounded.aclose()


async def test_the_cluster_client_gives_up_after_the_pool_timeout(cluster_url):
    client = redis_client(cluster_url, max_connections=1, pool_timeout=0.2)
    try:
        blocked = asyncio.create_task(client.blpop(["empty"], timeout=1))
        await asyncio.sleep(0.05)
        with pytest.raises(Exception, match="No connection available"):
            await client.get("x")
        await blocked
        assert await client.get("x") is None  # free again
    finally:
        await client.aclose()


def test_an_unreachable_redis_stops_the_probe_with_a_clear_error():
    from harness import free_port

    with pytest.raises(RedisProbeError, match="cannot reach Redis at redis://:\\*\\*\\*@127.0.0.1"):
        is_cluster(f"redis://:secret@127.0.0.1:{free_port()}", timeout=0.3)


async def test_commands_started_together_on_a_fresh_cluster_client_all_succeed(cluster_url):
    """redis-py 8.1's RedisCluster failed one such start in about five here (a connection
    closed under another command); BoundedRedisCluster reads the topology first."""
    for _ in range(10):
        client = redis_client(cluster_url)
        try:
            await asyncio.gather(*(client.get(f"k{i}") for i in range(50)))
        finally:
            await client.aclose()
