"""One test suite for each store interface, run against the memory and the Redis implementation."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from server.event_log import MemoryEventLog, RedisEventLog, parse_offset
from server.idempotency import PENDING, MemoryIdempotencyStore, RedisIdempotencyStore, wait_for_ack
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


def make_log(kind, max_length=100, max_age=3600.0):
    name, client = kind
    if name == "memory":
        return MemoryEventLog(max_length, max_age)
    return RedisEventLog(client(), client(), "t", max_length, max_age)


async def test_offsets_increase_and_read_after(kind):
    log = make_log(kind)
    offsets = [await log.append("s", f"e{i}".encode()) for i in range(20)]
    keys = [parse_offset(o) for o in offsets]
    assert keys == sorted(keys) and len(set(keys)) == 20
    got = await log.read("s", offsets[4], 100)
    assert [e.data for e in got] == [f"e{i}".encode() for i in range(5, 20)]
    assert [e.offset for e in got] == offsets[5:]
    assert [e.data for e in await log.read("s", "0-0", 3)] == [b"e0", b"e1", b"e2"]
    assert await log.read("s", offsets[-1], 10) == []


async def test_streams_are_separate(kind):
    log = make_log(kind)
    await log.append("a", b"1")
    await log.append("b", b"2")
    assert [e.data for e in await log.read("a", "0-0")] == [b"1"]
    assert [e.data for e in await log.read("b", "0-0")] == [b"2"]


async def test_history_newest_first_window(kind):
    log = make_log(kind)
    offsets = [await log.append("s", str(i).encode()) for i in range(10)]
    assert [e.data for e in await log.history("s", 3)] == [b"7", b"8", b"9"]
    assert [e.data for e in await log.history("s", 2, before=offsets[5])] == [b"3", b"4"]
    assert await log.history("s", 0) == []


async def test_position_and_epoch(kind):
    log = make_log(kind)
    empty = await log.position("s")
    assert empty.offset == "0-0" and empty.epoch
    last = await log.append("s", b"x")
    pos = await log.position("s")
    assert pos.offset == last and pos.epoch == empty.epoch == await log.epoch("s")


async def test_coverage_after_trimming_by_length(kind):
    log = make_log(kind, max_length=10)
    offsets = [await log.append("s", str(i).encode()) for i in range(200)]
    # the Redis implementation trims approximately (MAXLEN ~), so only bounds are certain
    assert not await log.covers("s", offsets[0])
    assert not await log.covers("s", "0-0")
    assert await log.covers("s", offsets[-1])
    assert await log.covers("s", offsets[-2])
    retained = await log.read("s", "0-0", 1000)
    assert len(retained) < 200
    assert await log.covers("s", retained[0].offset)
    # an offset from the future (another epoch) is never covered
    ms, seq = parse_offset(offsets[-1])
    assert not await log.covers("s", f"{ms + 10_000}-0")


async def test_empty_stream_covers_only_its_start(kind):
    log = make_log(kind)
    assert await log.covers("fresh", "0-0")
    assert not await log.covers("fresh", "1-0")


async def test_trim_by_age(kind):
    log = make_log(kind, max_age=0.2)
    old = await log.append("s", b"old")
    await asyncio.sleep(0.3)
    new = await log.append("s", b"new")
    await log.trim("s")
    assert [e.data for e in await log.read("s", "0-0")] == [b"new"]
    assert not await log.covers("s", "0-0")
    assert await log.covers("s", new)
    assert old != new


async def test_follow_wakes_on_append(kind):
    log = make_log(kind)
    start = (await log.position("s")).offset

    async def later():
        await asyncio.sleep(0.1)
        return await log.append("s", b"late")

    task = asyncio.create_task(later())
    t0 = time.monotonic()
    got = await log.follow({"s": start}, timeout=5)
    assert time.monotonic() - t0 < 3
    assert [(s, e.data) for s, e in got] == [("s", b"late")]
    assert got[0][1].offset == await task
    assert await log.follow({"s": got[0][1].offset}, timeout=0.1) == []


async def test_malformed_offsets_are_rejected(kind):
    log = make_log(kind)
    for bad in ("", "abc", "1-", "-1", "1-2-3", "x-1", 5, None):
        with pytest.raises(ValueError):
            await log.read("s", bad)  # type: ignore[arg-type]


async def test_redis_epoch_changes_when_redis_loses_its_data(redis_url):
    a, b = aioredis.from_url(redis_url), aioredis.from_url(redis_url)
    log = RedisEventLog(a, b, "t")
    before = await log.epoch("s")
    assert await log.epoch("s") == before
    await a.flushall()
    assert await log.epoch("s") != before
    await a.aclose()
    await b.aclose()


async def test_memory_epoch_is_new_per_process():
    assert await MemoryEventLog().epoch("s") != await MemoryEventLog().epoch("s")


# ---------------------------------------------------------------------- sessions


def make(kind, memory_cls, redis_cls):
    name, client = kind
    return memory_cls() if name == "memory" else redis_cls(client(), "t")


async def test_sessions_are_taken_once_and_expire(kind):
    store = make(kind, MemorySessionStore, RedisSessionStore)
    s = SavedSession(sid="S", pid="P", namespace="/chat", rooms=["room:a"], data={"k": 1}, origin="5-0", epoch="e")
    await store.save(s, 10)
    got = await store.take("P")
    assert got == s
    assert await store.take("P") is None
    await store.save_many([SavedSession("S2", "P2", "/chat", [], {}, "0-0", "e")], 0.2)
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
