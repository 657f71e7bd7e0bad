"""The channel log contract: one suite run against the memory and the Redis implementation,
then what only Redis can do wrong (lost connections, garbage written by someone else)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Awaitable, Callable

import msgpack
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.crc import key_slot
from redis.exceptions import ConnectionError, ResponseError

from realtime_channels.channel_log import (
    EMPTY,
    ChannelBounds,
    ChannelLogError,
    MemoryChannelLog,
    Publication,
    PublishResult,
    StreamPosition,
)
from realtime_channels.redis_channel_log import (
    PUBLISH_SCRIPT,
    NotReplicatedError,
    RedisChannelLog,
    channel_keys,
    decode_notification,
    encode_notification,
    idempotency_key_name,
)
from realtime_channels.sharded_redis import ShardedRedis

from harness import calls_of, kill_and_publish

PREFIX = "t"


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0,
                     what: str = "condition") -> None:
    """Wait until ``check()`` is true; fail after ``timeout`` (a bound on a hang, not a speed
    assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.02)


class Collector:
    """The owner's callbacks: records every notification and resync signal."""

    def __init__(self) -> None:
        self.publications: list[tuple[str, Publication]] = []
        self.resyncs: list[str] = []

    def on_publication(self, channel: str, publication: Publication) -> None:
        self.publications.append((channel, publication))

    def on_resync(self, channel: str) -> None:
        self.resyncs.append(channel)

    def offsets(self, channel: str) -> list[int]:
        return [p.offset for c, p in self.publications if c == channel]


class Backend:
    """Makes logs of one implementation and looks at what they store, for the contract suite."""

    def __init__(self, kind: str, redis_url: str | None) -> None:
        self.kind = kind
        self.redis_url = redis_url
        self.clients: list[aioredis.Redis] = []
        self.logs: list[Any] = []
        self.shared_memory: MemoryChannelLog | None = None

    def client(self) -> aioredis.Redis | RedisCluster | ShardedRedis:
        if self.kind == "cluster":
            c = RedisCluster.from_url(self.redis_url)
        elif self.kind == "shards":
            c = ShardedRedis.from_url(self.redis_url)
        else:
            c = aioredis.from_url(self.redis_url)
        self.clients.append(c)
        return c

    def make(self, bounds: ChannelBounds = ChannelBounds(max_length=100), *, subscriber: Collector | None = None,
             fresh: bool = False, sweep: bool = True):
        """A log. Redis: a new instance on its own client (another node). Memory: the one
        instance of this process (a node talks to its own memory log), unless ``fresh``;
        ``sweep=False`` turns its background sweep off."""
        callbacks = {} if subscriber is None else {"on_publication": subscriber.on_publication,
                                                   "on_resync": subscriber.on_resync}
        if self.kind != "memory":
            log = RedisChannelLog(self.client(), prefix=PREFIX, bounds=bounds,
                                  sharded=self.kind in ("redis-sharded", "cluster"), **callbacks)
        else:
            if self.shared_memory is not None and not fresh:
                if subscriber is not None:
                    self.shared_memory.on_publication = subscriber.on_publication
                return self.shared_memory
            log = MemoryChannelLog(bounds, sweep_interval=None if sweep else 3600.0, **callbacks)
            self.shared_memory = log
        self.logs.append(log)
        return log

    async def stored(self, log) -> int:
        """How many things the store holds: Redis keys, or memory channels + idempotency keys."""
        if self.kind == "cluster":
            return await self.clients[0].dbsize(target_nodes=RedisCluster.PRIMARIES)
        if self.kind != "memory":
            return await self.clients[0].dbsize()  # summed over the instances with shards
        return log.channel_count + log.idempotency_count

    async def entries(self, log, channel: str) -> int:
        """Publications physically held for ``channel`` (expired or not)."""
        if self.kind != "memory":
            return await self.clients[0].xlen(channel_keys(PREFIX, channel).stream)
        state = log._channels.get(channel)
        return 0 if state is None else len(state.entries)

    async def lose_history(self, log):
        """Redis: FLUSHALL. Memory: the node restarts (a new instance)."""
        if self.kind != "memory":
            await self.clients[0].flushall()  # a cluster client sends it to every primary
            return log
        return self.make(log.bounds, fresh=True)

    async def close(self) -> None:
        for log in self.logs:
            await log.close()
        for c in self.clients:
            await c.aclose()


@pytest.fixture(params=["memory", "redis", "redis-sharded", "cluster", "shards"])
async def backend(request):
    """Memory; Redis with PUBLISH/SUBSCRIBE; Redis with SPUBLISH/SSUBSCRIBE (Redis >= 7); a
    Redis Cluster of 3 primaries and 3 replicas with sharded pub/sub; three independent Redis
    instances, each channel on the one its hash tag routes to (``redis+shards://``)."""
    if request.param == "memory":
        url = None
    elif request.param == "cluster":
        url = request.getfixturevalue("cluster_url")
    elif request.param == "shards":
        url = request.getfixturevalue("shards_url")
    else:
        url = request.getfixturevalue("redis_url")
    b = Backend(request.param, url)
    yield b
    await b.close()


# ------------------------------------------------------------------ offsets and epochs


async def test_offsets_count_up_by_one_per_channel_with_a_stable_epoch(backend):
    log = backend.make()
    results = [await log.publish("room", f"m{i}".encode()) for i in range(1, 6)]
    assert [r.position.offset for r in results] == [1, 2, 3, 4, 5]
    assert not any(r.duplicate for r in results)
    epoch = results[0].position.epoch
    assert epoch and all(r.position.epoch == epoch for r in results)
    assert await log.position("room") == StreamPosition(5, epoch)
    other = await log.publish("other", b"x")
    assert other.position.offset == 1 and other.position.epoch != epoch
    history = await log.history("room", limit=10)
    assert [(p.offset, p.data, p.epoch) for p in history.publications] == [
        (i, f"m{i}".encode(), epoch) for i in range(1, 6)]
    times = [p.time_ms for p in history.publications]
    assert times == sorted(times) and abs(times[-1] / 1000 - time.time()) < 60


async def test_epoch_changes_when_history_is_lost(backend):
    log = backend.make()
    for i in range(3):
        before = await log.publish("room", b"old%d" % i)
    old = before.position
    log = await backend.lose_history(log)
    assert await log.position("room") == EMPTY
    after = [await log.publish("room", b"new%d" % i) for i in range(5)]
    assert [r.position.offset for r in after] == [1, 2, 3, 4, 5]
    assert after[0].position.epoch != old.epoch
    # A reader from the lost epoch is told so, although offset 3 exists again, and is given
    # everything of the new epoch (it has seen none of it).
    result = await log.history("room", since=old, limit=10)
    assert not result.recoverable
    assert [p.data for p in result.publications] == [b"new%d" % i for i in range(5)]
    assert result.position == after[-1].position


async def test_renew_epoch_after_lost_writes_continues_the_old_epoch_below_the_lost_offset(backend):
    """A reader says which publications it delivered; those the channel lost (another
    publication at the offset now, or an offset it no longer has) make a new epoch in which a
    position below the first lost offset goes on, and one at or after it is unrecoverable."""
    log = backend.make()
    published = [await log.publish("room", b"%d" % i) for i in range(1, 7)]
    old = published[0].position.epoch
    stored = [(p.offset, p.time_ms) for p in (await log.history("room", limit=10)).publications]
    # Everything delivered is stored as delivered: nothing lost, nothing renewed.
    assert await log.renew_epoch("room", old, stored) == StreamPosition(6, old)
    assert (await log.history("room", limit=0)).previous_epoch == ""
    # Offsets 4 and 5 were delivered as other publications (other times), 7 and 8 are gone.
    delivered = [*stored[:3], (4, stored[3][1] - 1), (5, stored[4][1] - 1), (7, 1), (8, 1)]
    renewed = await log.renew_epoch("room", old, delivered)
    assert renewed.offset == 6 and renewed.epoch not in ("", old)
    assert await log.position("room") == renewed
    # Someone renewed already: a second report changes nothing.
    assert await log.renew_epoch("room", old, delivered) == renewed
    newest = await log.history("room", limit=10)
    assert newest.recoverable and (newest.previous_epoch, newest.base) == (old, 4)
    assert [(p.offset, p.data, p.epoch) for p in newest.publications] == [
        (i, b"%d" % i, renewed.epoch) for i in range(1, 7)]
    # Below the base, a position of the old epoch goes on in the new one.
    for since in (0, 1, 3):
        result = await log.history("room", since=StreamPosition(since, old), limit=10)
        assert result.recoverable, since
        assert [p.position for p in result.publications] == [
            StreamPosition(i, renewed.epoch) for i in range(since + 1, 7)]
        assert (result.previous_epoch, result.base) == (old, 4)
    # From the base on, the reader had a lost publication: told so, never continued.
    for since in (4, 5, 6, 8):
        result = await log.history("room", since=StreamPosition(since, old), limit=10)
        assert not result.recoverable, since
    # The new epoch goes on from the channel's newest offset.
    after = await log.publish("room", b"7")
    assert after.position == StreamPosition(7, renewed.epoch)
    more = await log.history("room", since=StreamPosition(6, renewed.epoch), limit=10)
    assert more.recoverable and [p.data for p in more.publications] == [b"7"]
    # A reader of an unrelated epoch still gets "unrecoverable".
    assert not (await log.history("room", since=StreamPosition(2, "0123abcd"), limit=10)).recoverable


async def redis_or_memory_forget(backend, log, channel: str) -> None:
    """Remove ``channel`` from the store (so the test's key count is about the others)."""
    if backend.kind == "memory":
        del log._channels[channel]
    else:
        keys = channel_keys(PREFIX, channel)
        for key in (keys.stream, keys.meta):
            await backend.clients[0].delete(key)


async def test_renew_epoch_without_an_intact_delivered_publication_continues_nothing(backend):
    """When no delivered publication below the lost ones is intact, the loss may have begun
    before what the reader reports: no position of the old epoch but 0 goes on."""
    log = backend.make()
    published = [await log.publish("room", b"%d" % i) for i in range(1, 4)]
    old = published[0].position.epoch
    renewed = await log.renew_epoch("room", old, [(3, 1), (4, 1)])
    assert renewed.epoch != old
    assert (await log.history("room", limit=0)).base == 1
    assert (await log.history("room", since=StreamPosition(0, old), limit=10)).recoverable
    for since in (1, 2, 3):
        assert not (await log.history("room", since=StreamPosition(since, old), limit=10)).recoverable
    # What the reader did not report is not known to be intact: the base follows the highest
    # intact publication it reported below the lost one.
    for i in range(1, 6):
        gappy = (await log.publish("gappy", b"%d" % i)).position.epoch
    times = {p.offset: p.time_ms for p in (await log.history("gappy", limit=10)).publications}
    await log.renew_epoch("gappy", gappy, [(1, times[1]), (2, times[2]), (5, times[5] - 1)])
    assert (await log.history("gappy", limit=0)).base == 3
    await redis_or_memory_forget(backend, log, "gappy")
    # A channel that does not exist, or a report of another epoch: nothing happens.
    assert await log.renew_epoch("nobody", old, [(1, 1)]) == EMPTY
    assert await log.renew_epoch("room", "0123abcd", [(1, 1)]) == renewed
    assert await backend.stored(log) == (1 if backend.kind == "memory" else 2)
    for bad in ([(0, 1)], [(1, -1)], [(True, 1)], [(1, 2, 3)], [1], None):
        with pytest.raises(ValueError):
            await log.renew_epoch("room", renewed.epoch, bad)
    with pytest.raises(ValueError):
        await log.renew_epoch("room", None, [])


# ------------------------------------------------------------------ history


async def test_history_newest_and_paging_since_an_offset(backend):
    log = backend.make()
    for i in range(1, 11):
        epoch = (await log.publish("room", b"%d" % i)).position.epoch
    top = StreamPosition(10, epoch)

    newest = await log.history("room", limit=3)
    assert [p.offset for p in newest.publications] == [8, 9, 10]
    assert newest.position == top and newest.recoverable

    pages, since = [], StreamPosition(0, epoch)
    while True:
        page = await log.history("room", since=since, limit=4)
        assert page.recoverable and page.position == top
        if not page.publications:
            break
        pages.append([p.offset for p in page.publications])
        since = page.publications[-1].position
    assert pages == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]

    after = await log.history("room", since=StreamPosition(4, epoch), limit=100)
    assert [p.data for p in after.publications] == [b"%d" % i for i in range(5, 11)]
    only_position = await log.history("room", since=StreamPosition(4, epoch), limit=0)
    assert only_position.publications == [] and only_position.position == top and only_position.recoverable
    # A reader that saw the channel before it existed continues from its first publication.
    from_nothing = await log.history("room", since=EMPTY, limit=2)
    assert [p.offset for p in from_nothing.publications] == [1, 2] and from_nothing.recoverable
    # An offset this channel never reached is not trusted.
    future = await log.history("room", since=StreamPosition(11, epoch), limit=10)
    assert not future.recoverable and future.publications == []


async def test_history_of_a_channel_that_does_not_exist(backend):
    log = backend.make()
    result = await log.history("nobody", limit=10)
    assert result.publications == [] and result.position == EMPTY and result.recoverable
    assert (await log.history("nobody", since=EMPTY, limit=10)).recoverable
    # A reader that had an epoch of it: the history it knew is gone.
    gone = await log.history("nobody", since=StreamPosition(3, "0123abcd"), limit=10)
    assert not gone.recoverable and gone.position == EMPTY


async def test_reads_never_create_anything(backend):
    log = backend.make()
    for i in range(500):
        name = f"unused-{i}"
        assert await log.position(name) == EMPTY
        await log.history(name, limit=50)
        await log.history(name, since=StreamPosition(7, "feedface00000000"), limit=50)
    assert await backend.stored(log) == 0


# ------------------------------------------------------------------ bounds


async def test_count_bound_trims_oldest_and_reports_unrecoverable(backend):
    log = backend.make(ChannelBounds(max_length=5))
    for i in range(1, 13):
        epoch = (await log.publish("room", b"%d" % i)).position.epoch
    assert await backend.entries(log, "room") == 5
    newest = await log.history("room", limit=100)
    assert [p.offset for p in newest.publications] == [8, 9, 10, 11, 12]
    kept = await log.history("room", since=StreamPosition(7, epoch), limit=100)
    assert kept.recoverable and [p.offset for p in kept.publications] == [8, 9, 10, 11, 12]
    for lost in (0, 2, 6):
        result = await log.history("room", since=StreamPosition(lost, epoch), limit=100)
        assert not result.recoverable, lost
        assert [p.offset for p in result.publications] == [8, 9, 10, 11, 12]
    assert (await log.history("room", since=StreamPosition(12, epoch), limit=100)).recoverable


async def test_publications_older_than_max_age_are_hidden_then_trimmed(backend):
    # No background sweep here: reads alone must hide what has expired.
    log = backend.make(ChannelBounds(max_length=100, max_age=2.0, dedupe_ttl=60.0), sweep=False)
    await log.publish("room", b"a1")
    epoch = (await log.publish("room", b"a2")).position.epoch
    await asyncio.sleep(1.2)
    await log.publish("room", b"a3")
    await asyncio.sleep(1.2)
    # a1 and a2 are older than max_age: gone from reads although nobody published since.
    assert await backend.entries(log, "room") == 3
    newest = await log.history("room", limit=10)
    assert [p.data for p in newest.publications] == [b"a3"]
    assert newest.position == StreamPosition(3, epoch)
    lost = await log.history("room", since=StreamPosition(1, epoch), limit=10)
    assert not lost.recoverable and [p.data for p in lost.publications] == [b"a3"]
    kept = await log.history("room", since=StreamPosition(2, epoch), limit=10)
    assert kept.recoverable and [p.data for p in kept.publications] == [b"a3"]
    # trim_expired removes them for good, where nobody publishes.
    assert await log.trim_expired() >= 2
    assert await backend.entries(log, "room") == 1
    assert [p.data for p in (await log.history("room", limit=10)).publications] == [b"a3"]


async def test_a_channel_without_publications_disappears_by_itself(backend):
    log = backend.make(ChannelBounds(max_length=100, max_age=1.0, dedupe_ttl=60.0))
    epoch = (await log.publish("room", b"a1")).position.epoch
    await log.publish("other", b"b1")
    # With no publication for max_age a channel disappears entirely, meta included, with no
    # call from anyone (Redis key expiry, the memory sweep): nothing is left...
    await eventually(lambda: _equals(backend.stored(log), 0), what="an empty store")
    # ...reading creates nothing, and the next publication starts a new epoch.
    assert await log.position("room") == EMPTY
    assert (await log.history("room", limit=10)).publications == []
    assert await backend.stored(log) == 0
    again = await log.publish("room", b"a2")
    assert again.position.offset == 1 and again.position.epoch != epoch


async def test_idempotency_keys_expire_after_dedupe_ttl(backend):
    log = backend.make(ChannelBounds(max_length=100, max_age=3600.0, dedupe_ttl=0.5))
    first = await log.publish("room", b"x", idempotency_key="k")
    assert (await log.publish("room", b"x", idempotency_key="k")).duplicate
    # Only the channel itself is left once the key's ttl has passed.
    expected = 1 if backend.kind == "memory" else 2
    await eventually(lambda: _equals(backend.stored(log), expected), what="idempotency key expired")
    again = await log.publish("room", b"x", idempotency_key="k")
    assert not again.duplicate and again.position.offset == first.position.offset + 1


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


# ------------------------------------------------------------------ idempotency


async def test_idempotent_publish_returns_the_first_result_and_appends_nothing(backend):
    subscriber = Collector()
    log = backend.make(subscriber=subscriber)
    reader = backend.make(subscriber=subscriber)
    await reader.subscribe(["room"])
    first = await log.publish("room", b"hello", idempotency_key="req-1")
    assert first == PublishResult(first.position, False) and first.position.offset == 1
    for _ in range(5):
        retry = await log.publish("room", b"hello again", idempotency_key="req-1")
        assert retry == PublishResult(first.position, True)
    other = await log.publish("room", b"second", idempotency_key="req-2")
    assert other.position == StreamPosition(2, first.position.epoch) and not other.duplicate
    # The key is per channel: the same key elsewhere is a new publication.
    elsewhere = await log.publish("lobby", b"x", idempotency_key="req-1")
    assert elsewhere.position.offset == 1 and not elsewhere.duplicate
    history = await log.history("room", limit=100)
    assert [(p.offset, p.data) for p in history.publications] == [(1, b"hello"), (2, b"second")]
    # Retries notify nobody: exactly the two publications arrive.
    await eventually(lambda: len(subscriber.offsets("room")) >= 2, what="two notifications")
    await log.publish("room", b"barrier")
    await eventually(lambda: 3 in subscriber.offsets("room"), what="the barrier")
    assert subscriber.offsets("room") == [1, 2, 3]


# ------------------------------------------------------------------ notifications


async def test_notifications_only_for_subscribed_channels_in_offset_order(backend):
    subscriber = Collector()
    node = backend.make(subscriber=subscriber)
    publisher = backend.make()
    await node.subscribe(["a", "c"])
    for i in range(1, 11):
        await publisher.publish("a", b"a%d" % i)
        await publisher.publish("b", b"b%d" % i)
    # Notifications of one publisher arrive in publish order, so once the last "a" is here,
    # any "b" would have been too.
    await eventually(lambda: 10 in subscriber.offsets("a"), what="ten notifications")
    assert [c for c, _ in subscriber.publications] == ["a"] * 10
    assert subscriber.offsets("a") == list(range(1, 11))
    # A notification is the stored publication: same offset, data, time and epoch.
    stored = (await publisher.history("a", limit=10)).publications
    assert [p for _, p in subscriber.publications] == stored

    await node.unsubscribe(["a"])
    await publisher.publish("a", b"after")
    await publisher.publish("c", b"barrier")
    await eventually(lambda: subscriber.offsets("c") == [1], what="the barrier")
    assert subscriber.offsets("a") == list(range(1, 11))


async def test_positions_read_together_equal_each_channels_position(backend):
    """positions() is position() per channel, in the order asked, whatever the channel's state:
    published to, never published to, renewed into another epoch, asked for twice."""
    log = backend.make()
    assert await log.positions([]) == []
    for i in range(3):
        await log.publish("a", b"%d" % i)
    await log.publish("b", b"x")
    old = (await log.publish("renewed", b"1")).position
    renewed = await log.renew_epoch("renewed", old.epoch, [(1, 1)])  # another publication than ours
    assert renewed.epoch not in ("", old.epoch)
    channels = ["a", "missing", "renewed", "b", "a", *(f"other-{i}" for i in range(20))]
    together = await log.positions(channels)
    assert together == [await log.position(c) for c in channels]
    assert together[:4] == [StreamPosition(3, together[0].epoch), EMPTY, renewed, StreamPosition(1, together[3].epoch)]
    assert len({p.epoch for p in (together[0], together[2], together[3])}) == 3
    assert await log.positions(["b"]) == [await log.position("b")]
    with pytest.raises(ValueError):
        await log.positions(["a", ""])


async def test_twenty_concurrent_publishers_get_unique_contiguous_offsets(backend):
    publishers = [backend.make(ChannelBounds(max_length=1000)) for _ in range(20)]

    async def publish_five(n: int) -> list[PublishResult]:
        return [await publishers[n].publish("room", b"%d-%d" % (n, i)) for i in range(5)]

    results = [r for batch in await asyncio.gather(*(publish_five(n) for n in range(20))) for r in batch]
    offsets = sorted(r.position.offset for r in results)
    assert offsets == list(range(1, 101))
    assert len({r.position.epoch for r in results}) == 1
    history = await publishers[0].history("room", limit=1000)
    by_offset = {p.offset: p.data for p in history.publications}
    # Every publisher's own offset points at its own data.
    for n in range(20):
        own = [r.position.offset for r in results[n * 5:(n + 1) * 5]]
        assert [by_offset[o] for o in own] == [b"%d-%d" % (n, i) for i in range(5)]


# ------------------------------------------------------------------ bad arguments


async def test_bad_channel_names_are_refused(backend):
    log = backend.make()
    for channel in ("", "a{b", "a}b", "x\x00", "tab\there", "x" * 257, None, 5, b"bytes"):
        for call in (lambda: log.publish(channel, b"x"), lambda: log.history(channel, limit=1),
                     lambda: log.position(channel), lambda: log.subscribe([channel])):
            with pytest.raises(ValueError):
                await call()
    assert await backend.stored(log) == 0


async def test_bad_publish_and_history_arguments_are_refused(backend):
    log = backend.make(ChannelBounds(max_length=10, max_data_size=100))
    for key in ("", "k{1}", "k\n", "k" * 129, 7):
        with pytest.raises(ValueError):
            await log.publish("room", b"x", idempotency_key=key)
    for data in ("text", 5, None, b"x" * 101):
        with pytest.raises(ValueError):
            await log.publish("room", data)
    assert await backend.stored(log) == 0
    assert (await log.publish("room", bytearray(b"y" * 100))).position.offset == 1
    for limit in (-1, True, 2.5, "3"):
        with pytest.raises(ValueError):
            await log.history("room", limit=limit)
    for since in ((1, "e"), StreamPosition(-1, "e"), StreamPosition(1, None)):
        with pytest.raises(ValueError):
            await log.history("room", since=since, limit=1)
    # A limit beyond max_length is capped, not an error.
    assert len((await log.history("room", limit=10**9)).publications) == 1


@pytest.mark.parametrize("kwargs", [{"max_length": 0}, {"max_length": 2.5}, {"max_age": 0},
                                    {"max_age": float("inf")}, {"dedupe_ttl": -1}, {"max_data_size": 0}])
def test_bounds_are_validated(kwargs):
    with pytest.raises(ValueError):
        ChannelBounds(**kwargs)


# ------------------------------------------------------------------ Redis only


@pytest.fixture
async def redis_client(redis_url):
    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_every_key_of_a_channel_is_in_one_slot(redis_client):
    log = RedisChannelLog(redis_client, prefix=PREFIX)
    await log.publish("room:1", b"x", idempotency_key="k")
    keys = sorted(k.decode() for k in await redis_client.keys("*"))
    layout = channel_keys(PREFIX, "room:1")
    assert keys == sorted([layout.stream, layout.meta, idempotency_key_name(PREFIX, "room:1", "k")])
    assert len({key_slot(k.encode()) for k in [*keys, layout.notify]}) == 1
    await log.close()


async def test_connect_path_reads_spell_the_names_of_channel_keys(redis_client):
    """position(s), subscribe and unsubscribe spell the meta and notification names inline
    (a connect's hot path); they must be the names channel_keys gives, which publish writes."""
    log = RedisChannelLog(redis_client, prefix=PREFIX)
    layout = channel_keys(PREFIX, "room:1")
    await redis_client.hset(layout.meta, mapping={"e": "E1", "o": 7})
    assert await log.position("room:1") == StreamPosition(7, "E1")
    assert await log.positions(["room:1", "room:2"]) == [StreamPosition(7, "E1"), StreamPosition(0, "")]
    await log.subscribe(["room:1"])
    assert await redis_client.pubsub_channels() == [layout.notify.encode()]
    await log.unsubscribe(["room:1"])
    await eventually(lambda: _no_channels(redis_client), what="unsubscribed")
    await log.close()


async def _no_channels(client: aioredis.Redis) -> bool:
    return await client.pubsub_channels() == []


async def test_a_decode_responses_client_is_refused(redis_url):
    client = aioredis.from_url(redis_url, decode_responses=True)
    with pytest.raises(ValueError):
        RedisChannelLog(client)
    await client.aclose()
    client = aioredis.from_url(redis_url)
    for prefix in ("a{b}", "", "a b", "x" * 65):
        with pytest.raises(ValueError):
            RedisChannelLog(client, prefix=prefix)
    await client.aclose()


async def test_notification_payload_is_the_shared_codec(redis_client):
    log = RedisChannelLog(redis_client, prefix=PREFIX)
    raw = redis_client.pubsub()
    await raw.subscribe(channel_keys(PREFIX, "room").notify)
    assert (await raw.get_message(timeout=5))["type"] == "subscribe"
    sizes = [0, 5, 31, 32, 255, 256, 65535, 65536]
    for size in sizes:
        await log.publish("room", bytes(range(256)) * (size // 256) + bytes(range(size % 256)))
    stored = (await log.history("room", limit=100)).publications
    for publication in stored:
        message = None
        while message is None:
            message = await raw.get_message(timeout=5)
        assert message["data"] == encode_notification(publication)
        assert decode_notification(message["data"], 1 << 20) == publication
    assert [len(p.data) for p in stored] == sizes
    await raw.aclose()


async def test_garbage_notifications_are_dropped_and_logged_once(redis_client, caplog):
    subscriber = Collector()
    log = RedisChannelLog(redis_client, prefix=PREFIX, on_publication=subscriber.on_publication)
    await log.subscribe(["room"])
    notify = channel_keys(PREFIX, "room").notify
    good = Publication(1, b"d", 1, "abcd")
    garbage = [b"", b"junk", b"\xc1", msgpack.packb([1, 2, 3]), msgpack.packb({"a": 1}),
               encode_notification(good)[:-1], encode_notification(good) + b"x",
               msgpack.packb([2, 1, b"abcd", 1, b"d"], use_bin_type=False),
               msgpack.packb([1, 0, b"abcd", 1, b"d"], use_bin_type=False),
               msgpack.packb([1, -5, b"abcd", 1, b"d"], use_bin_type=False),
               msgpack.packb([1, "1", b"abcd", 1, b"d"], use_bin_type=False),
               msgpack.packb([1, 1, b"ab cd", 1, b"d"], use_bin_type=False),
               msgpack.packb([1, 1, b"", 1, b"d"], use_bin_type=False),
               msgpack.packb([1, 1, b"abcd", -1, b"d"], use_bin_type=False),
               msgpack.packb([1, 1, b"abcd", 1, 7], use_bin_type=False),
               msgpack.packb([1, 1, b"abcd", 1, b"d" * (2 << 20)], use_bin_type=False),
               msgpack.packb([1, 2 ** 63, b"abcd", 1, b"d"], use_bin_type=False)]
    with caplog.at_level(logging.WARNING, logger="realtime_channels.redis_channel_log"):
        for payload in garbage:
            await redis_client.publish(notify, payload)
        result = await log.publish("room", b"real")
        await eventually(lambda: len(subscriber.publications) >= 1, what="the real notification")
    assert subscriber.publications == [("room", Publication(1, b"real", subscriber.publications[0][1].time_ms,
                                                            result.position.epoch))]
    warnings = [r for r in caplog.records if "malformed notification" in r.getMessage()]
    assert len(warnings) == 1 and not warnings[0].exc_info
    await log.close()


async def test_garbage_stream_entries_are_not_trusted(redis_client):
    log = RedisChannelLog(redis_client, prefix=PREFIX)
    for i in range(1, 4):
        epoch = (await log.publish("room", b"%d" % i)).position.epoch
    keys = channel_keys(PREFIX, "room")
    # Someone else writes entry 4 without the fields we write, and moves the offset on.
    await redis_client.xadd(keys.stream, {"x": "y"}, id="4-0")
    await redis_client.hset(keys.meta, "o", 4)
    assert (await log.publish("room", b"5")).position.offset == 5
    since = await log.history("room", since=StreamPosition(3, epoch), limit=10)
    assert not since.recoverable and [p.offset for p in since.publications] == [5]
    newest = await log.history("room", limit=10)
    assert not newest.recoverable and [p.offset for p in newest.publications] == [1, 2, 3, 5]
    # Entries from before the damage are still exact.
    before = await log.history("room", since=StreamPosition(1, epoch), limit=2)
    assert before.recoverable and [p.data for p in before.publications] == [b"2", b"3"]
    # A non-numeric time, an ID that is not "<offset>-0": rejected the same way.
    await redis_client.xadd(keys.stream, {"d": "x", "t": "soon"}, id="6-0")
    await redis_client.xadd(keys.stream, {"d": "x", "t": "1"}, id="7-1")
    await redis_client.hset(keys.meta, "o", 7)
    tail = await log.history("room", since=StreamPosition(5, epoch), limit=10)
    assert not tail.recoverable and tail.publications == []
    # An entry ahead of the meta's offset: the next publish ("8-0") cannot append after it,
    # so it fails clearly and changes nothing.
    await redis_client.xadd(keys.stream, {"d": "x", "t": "1"}, id="8-1")
    with pytest.raises(ChannelLogError):
        await log.publish("room", b"8")
    assert await log.position("room") == StreamPosition(7, epoch)
    await log.close()


@pytest.mark.parametrize("field,value", [("o", "abc"), ("o", "-3"), ("e", "bad epoch!"), ("e", "x" * 65)])
async def test_corrupt_meta_is_a_clear_error_and_harms_no_other_channel(redis_client, field, value):
    log = RedisChannelLog(redis_client, prefix=PREFIX)
    await log.publish("room", b"1")
    await log.publish("bystander", b"1")
    await redis_client.hset(channel_keys(PREFIX, "room").meta, field, value)
    for call in (lambda: log.publish("room", b"2"), lambda: log.history("room", limit=5),
                 lambda: log.position("room"), lambda: log.history("room", since=StreamPosition(1, "abc"), limit=5)):
        with pytest.raises(ChannelLogError):
            await call()
    assert (await log.publish("bystander", b"2")).position.offset == 2
    assert await redis_client.xlen(channel_keys(PREFIX, "room").stream) == 1
    await log.close()


async def test_a_publish_that_cannot_notify_writes_nothing(redis_client):
    """The script undoes its append when the notification fails (e.g. SPUBLISH on Redis 6)."""
    log = RedisChannelLog(redis_client, prefix=PREFIX)
    bounds = log.bounds

    async def publish_with(command: str, channel: str) -> Any:
        keys = channel_keys(PREFIX, channel)
        return await redis_client.eval(PUBLISH_SCRIPT, 2, keys.stream, keys.meta, b"x", bounds.max_length,
                                       bounds.max_age_ms, bounds.dedupe_ttl_ms, "0123456789abcdef",
                                       keys.notify, command)

    with pytest.raises(ResponseError, match="cannot notify"):
        await publish_with("nosuchcommand", "new")
    assert await redis_client.dbsize() == 0
    before = (await log.publish("room", b"1")).position
    with pytest.raises(ResponseError, match="cannot notify"):
        await publish_with("nosuchcommand", "room")
    assert await log.position("room") == before
    assert [p.data for p in (await log.history("room", limit=10)).publications] == [b"1"]
    assert (await log.publish("room", b"2")).position.offset == 2
    await log.close()


async def test_a_stream_left_without_its_meta_starts_a_new_epoch(redis_client):
    """Eviction can drop the meta and keep the stream: its offsets belong to a lost epoch."""
    log = RedisChannelLog(redis_client, prefix=PREFIX)
    for i in range(3):
        old = (await log.publish("room", b"old")).position
    await redis_client.delete(channel_keys(PREFIX, "room").meta)
    new = (await log.publish("room", b"new")).position
    assert new.offset == 1 and new.epoch != old.epoch
    assert [p.data for p in (await log.history("room", limit=10)).publications] == [b"new"]
    await log.close()


async def test_a_promoted_lagging_replica_then_renew_epoch_on_a_real_redis(redis_client):
    """What a failover does to a channel, on a real redis-server: the primary had 1..8, its
    replica only 1..5 when promoted, so the next publications reuse offsets 6 and 7. A reader
    of offset 7 of the old epoch would be given nothing and never see them; once a node that
    delivered the lost ones renews the epoch, it is told recovery is impossible, and a reader
    of offset 5 continues with the two new ones."""
    log = RedisChannelLog(redis_client, prefix=PREFIX)
    keys = channel_keys(PREFIX, "room")
    for i in range(1, 9):
        old = (await log.publish("room", b"old%d" % i)).position.epoch
    delivered = [(p.offset, p.time_ms) for p in (await log.history("room", limit=10)).publications]
    # The promoted replica: entries 6..8 never arrived, its meta says offset 5.
    await redis_client.xdel(keys.stream, "6-0", "7-0", "8-0")
    await redis_client.execute_command("XSETID", keys.stream, "5-0")
    await redis_client.hset(keys.meta, mapping={"o": 5, "t": delivered[4][1]})
    await asyncio.sleep(0.005)  # the new publications get later times than the lost ones
    reused = [(await log.publish("room", b"new%d" % i)).position for i in (6, 7)]
    assert reused == [StreamPosition(6, old), StreamPosition(7, old)]
    # Without a renewal the old epoch goes on and a reader at 7 misses new6 and new7 silently.
    hole = await log.history("room", since=StreamPosition(7, old), limit=10)
    assert hole.recoverable and hole.publications == []

    renewed = await log.renew_epoch("room", old, delivered)
    assert renewed.offset == 7 and renewed.epoch != old
    assert await redis_client.hmget(keys.meta, ["pe", "b"]) == [old.encode(), b"6"]
    assert await redis_client.pttl(keys.meta) > 0  # it still expires with the channel
    assert not (await log.history("room", since=StreamPosition(7, old), limit=10)).recoverable
    assert not (await log.history("room", since=StreamPosition(6, old), limit=10)).recoverable
    go_on = await log.history("room", since=StreamPosition(5, old), limit=10)
    assert go_on.recoverable and [(p.data, p.epoch) for p in go_on.publications] == [
        (b"new6", renewed.epoch), (b"new7", renewed.epoch)]
    # Another node reports the same loss: renewed already, nothing changes.
    assert await log.renew_epoch("room", old, delivered[-3:]) == renewed
    # A reader that only had the intact publications says nothing was lost.
    assert await log.renew_epoch("room", renewed.epoch, delivered[:5]) == renewed
    await log.close()


@pytest.mark.parametrize("retries", [0, 3], ids=["log-reconnects", "redis-py-reconnects"])
async def test_resubscribes_after_the_connection_is_killed_and_signals_a_gap_read(redis_url, retries):
    # Without retries the log's reader rebuilds the connection; with them redis-py reconnects
    # and resubscribes by itself: both must end in a resync of every channel.
    subscriber = Collector()
    client = aioredis.from_url(redis_url, retry=Retry(ExponentialBackoff(), retries),
                               retry_on_error=[ConnectionError])
    node = RedisChannelLog(client, prefix=PREFIX, on_publication=subscriber.on_publication,
                           on_resync=subscriber.on_resync)
    admin = aioredis.from_url(redis_url)
    publisher = RedisChannelLog(admin, prefix=PREFIX)
    await node.subscribe(["a", "b"])
    epoch = (await publisher.publish("a", b"1")).position.epoch
    await eventually(lambda: subscriber.offsets("a") == [1], what="the first notification")

    await kill_and_publish(admin, PREFIX, publisher.bounds, [("a", b"2"), ("a", b"3")])
    await eventually(lambda: sorted(subscriber.resyncs) == ["a", "b"], what="a resync of both channels")
    # The owner's gap read: everything after the last offset it delivered.
    delivered = subscriber.offsets("a")
    assert delivered == [1]  # 2 and 3 were published while nobody listened
    gap = await node.history("a", since=StreamPosition(delivered[-1], epoch), limit=100)
    assert gap.recoverable and [p.data for p in gap.publications] == [b"2", b"3"]
    # And the subscription works again.
    await publisher.publish("a", b"4")
    await publisher.publish("b", b"1")
    await eventually(lambda: subscriber.offsets("a") == [1, 4] and subscriber.offsets("b") == [1],
                     what="notifications after the resubscription")
    assert sorted(subscriber.resyncs) == ["a", "b"]
    await node.close()
    await admin.aclose()
    await client.aclose()


async def test_resubscribes_after_redis_restarts(own_redis):
    subscriber = Collector()
    client = aioredis.from_url(own_redis.url)
    node = RedisChannelLog(client, prefix=PREFIX, on_publication=subscriber.on_publication,
                           on_resync=subscriber.on_resync)
    await node.subscribe(["a"])
    old = (await node.publish("a", b"1")).position
    await eventually(lambda: subscriber.offsets("a") == [1], what="the first notification")
    own_redis.stop()
    await asyncio.sleep(1.0)  # long enough for redis-py's own reconnect attempts to give up
    own_redis.start()
    await eventually(lambda: subscriber.resyncs == ["a"], timeout=30, what="a resync after the restart")
    # The pool's connections died with the server (this client has no retries): drop them.
    await client.connection_pool.disconnect(inuse_connections=False)
    # The restarted Redis has no data: the gap read says the history is lost.
    gap = await node.history("a", since=old, limit=10)
    assert not gap.recoverable and gap.position == EMPTY
    new = await node.publish("a", b"2")
    assert new.position.offset == 1 and new.position.epoch != old.epoch
    await eventually(lambda: len(subscriber.publications) == 2, what="a notification after the restart")
    assert subscriber.publications[1][1].position == new.position
    await node.close()
    await client.aclose()


async def test_a_silent_pubsub_connection_is_replaced(redis_client, redis_server, proxies):
    """A connection that stays open but carries nothing (a frozen network path) is found out by
    its unanswered PING, replaced, and its channels resynced."""
    proxy = await proxies([redis_server.port])
    subscriber = Collector()
    client = aioredis.from_url(f"redis://127.0.0.1:{proxy.port}/0")
    node = RedisChannelLog(client, prefix=PREFIX, on_publication=subscriber.on_publication,
                           on_resync=subscriber.on_resync, ping_interval=0.3)
    publisher = RedisChannelLog(redis_client, prefix=PREFIX)
    await node.subscribe(["a"])
    epoch = (await publisher.publish("a", b"1")).position.epoch
    await eventually(lambda: subscriber.offsets("a") == [1], what="the first notification")
    proxy.freeze()
    await publisher.publish("a", b"2")
    await asyncio.sleep(1.5)  # several ping intervals of silence
    proxy.thaw()
    await eventually(lambda: subscriber.resyncs == ["a"], what="a resync after the silence")
    gap = await node.history("a", since=StreamPosition(1, epoch), limit=10)
    assert gap.recoverable and [p.data for p in gap.publications] == [b"2"]
    await publisher.publish("a", b"3")
    await eventually(lambda: 3 in subscriber.offsets("a"), what="a notification on the new connection")
    await node.close()
    await client.aclose()


async def test_subscribe_waits_for_confirmation_so_a_following_read_misses_nothing(redis_client, redis_url):
    subscriber = Collector()
    node = RedisChannelLog(redis_client, prefix=PREFIX, on_publication=subscriber.on_publication)
    other = aioredis.from_url(redis_url)
    publisher = RedisChannelLog(other, prefix=PREFIX)
    names = [f"room-{i}" for i in range(300)]
    await node.subscribe(names)
    # Every channel is subscribed once subscribe() returns: one publication each arrives.
    for name in names:
        await publisher.publish(name, b"x")
    await eventually(lambda: len(subscriber.publications) == 300, what="300 notifications")
    assert sorted(c for c, _ in subscriber.publications) == sorted(names)
    await node.close()
    await other.aclose()


def _same_slot(count: int) -> list[str]:
    """``count`` channel names whose keys share one cluster slot."""
    slot = key_slot(b"room-0")
    names, i = ["room-0"], 0
    while len(names) < count:
        i += 1
        if key_slot(b"room-%d" % i) == slot:
            names.append(f"room-{i}")
    return names


@pytest.mark.parametrize("sharded", [False, True], ids=["subscribe", "ssubscribe"])
async def test_subscribes_of_one_loop_turn_are_one_command_and_each_returns_once_confirmed(
        redis_client, redis_url, sharded):
    """Callers subscribing in the same loop turn cost Redis one command (SSUBSCRIBE: one per
    slot), and a publication made the moment a caller's subscribe() returns is heard."""
    subscriber = Collector()
    node = RedisChannelLog(aioredis.from_url(redis_url), prefix=PREFIX, sharded=sharded,
                           on_publication=subscriber.on_publication, on_resync=subscriber.on_resync)
    publisher = RedisChannelLog(redis_client, prefix=PREFIX, sharded=sharded)
    command = "ssubscribe" if sharded else "subscribe"
    # Sharded: names of one slot (a channel's name is its hash tag), so one SSUBSCRIBE can carry them all.
    names = _same_slot(6) if sharded else [f"room-{i}" for i in range(20)]
    await node.subscribe(["warm-up"])  # the pub/sub connection exists
    before = await calls_of(redis_client, command)

    async def subscribe_then_publish(name: str) -> None:
        await node.subscribe([name])
        await publisher.publish(name, b"right after")

    await asyncio.gather(*(subscribe_then_publish(n) for n in names))
    assert await calls_of(redis_client, command) - before == 1
    await eventually(lambda: sorted(c for c, _ in subscriber.publications) == sorted(names),
                     what="a notification of each channel published right after its subscribe")
    assert subscriber.resyncs == []
    # Names of several slots: one SSUBSCRIBE per slot, still all in one turn.
    if sharded:
        spread = [f"spread-{i}" for i in range(10)]
        before = await calls_of(redis_client, command)
        await asyncio.gather(*(node.subscribe([n]) for n in spread))
        assert await calls_of(redis_client, command) - before == len({key_slot(node.keys(n).notify.encode())
                                                                     for n in spread})
    await node.close()
    await node.client.aclose()


@pytest.mark.parametrize("retries", [0, 3], ids=["log-reconnects", "redis-py-reconnects"])
async def test_a_batch_sent_on_a_dead_connection_is_confirmed_on_the_next_one(redis_client, redis_url, retries):
    """The pub/sub connection dies just before a turn's batch is sent on it: every caller still
    returns once its names are subscribed (on the rebuilt connection), and is heard; a
    channel subscribed before gets its resync."""
    subscriber = Collector()
    client = aioredis.from_url(redis_url, retry=Retry(ExponentialBackoff(), retries),
                               retry_on_error=[ConnectionError])
    node = RedisChannelLog(client, prefix=PREFIX, on_publication=subscriber.on_publication,
                           on_resync=subscriber.on_resync)
    publisher = RedisChannelLog(redis_client, prefix=PREFIX)
    await node.subscribe(["before"])
    names = [f"room-{i}" for i in range(20)]

    async def subscribe_then_publish(name: str) -> None:
        await node.subscribe([name])
        await publisher.publish(name, b"right after")

    await redis_client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    await asyncio.wait_for(asyncio.gather(*(subscribe_then_publish(n) for n in names)), 10)
    await eventually(lambda: sorted(c for c, _ in subscriber.publications) == sorted(names),
                     what="a notification of each channel published right after its subscribe")
    # With or without redis-py's retries, one connection replaces the dead one (nothing
    # reconnects in place behind the log's back): one resync, of the older channel only.
    await eventually(lambda: subscriber.resyncs == ["before"], what="a resync of the older channel")
    await asyncio.sleep(0.2)
    assert subscriber.resyncs == ["before"]
    await node.close()
    await client.aclose()


async def test_a_caller_that_gives_up_leaves_the_others_of_its_batch_unharmed(redis_client, redis_url):
    subscriber = Collector()
    node = RedisChannelLog(aioredis.from_url(redis_url), prefix=PREFIX,
                           on_publication=subscriber.on_publication, on_resync=subscriber.on_resync)
    publisher = RedisChannelLog(redis_client, prefix=PREFIX)
    quitter = asyncio.ensure_future(node.subscribe(["quitter"]))
    stayers = [asyncio.ensure_future(node.subscribe([f"stayer-{i}"])) for i in range(3)]
    await asyncio.sleep(0)  # all of them queued their names
    quitter.cancel()
    await asyncio.wait_for(asyncio.gather(*stayers), 10)
    for i in range(3):
        await publisher.publish(f"stayer-{i}", b"x")
    # The quitter's channel was sent anyway, and stays subscribed until unsubscribed.
    await publisher.publish("quitter", b"x")
    await eventually(lambda: len(subscriber.publications) == 4, what="four notifications")
    assert subscriber.resyncs in ([], ["quitter"])  # confirmed after its caller left: maybe a resync
    await node.close()
    await node.client.aclose()


async def test_notifications_received_in_one_read_are_all_delivered_in_order(redis_client, redis_url):
    """Thousands of notifications reach the subscriber in one burst (one transaction): the
    reader hands every reply already received over before it waits on the socket again,
    none lost, in Redis's order, the two channels interleaved as published."""
    subscriber = Collector()
    node = RedisChannelLog(aioredis.from_url(redis_url), prefix=PREFIX, on_publication=subscriber.on_publication,
                           on_resync=subscriber.on_resync)
    await node.subscribe(["a", "b"])
    count = 3000
    async with redis_client.pipeline(transaction=True) as pipe:
        for i in range(count):
            channel = "ab"[i % 2]
            pipe.publish(channel_keys(PREFIX, channel).notify,
                         encode_notification(Publication(i // 2 + 1, b"%d" % i, 1, "0123456789abcdef")))
        await pipe.execute()
    await eventually(lambda: len(subscriber.publications) == count, what=f"{count} notifications")
    assert [p.data for _, p in subscriber.publications] == [b"%d" % i for i in range(count)]
    assert [c for c, _ in subscriber.publications] == ["ab"[i % 2] for i in range(count)]
    assert subscriber.resyncs == []
    await node.close()
    await node.client.aclose()


async def test_the_pubsub_connection_takes_no_place_in_the_clients_pool(redis_url):
    """A client whose pool holds one connection still publishes and reads while subscribed:
    the pub/sub connection is the log's own, not one held out of the pool for good."""
    pool = aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=1, timeout=1)
    client = aioredis.Redis(connection_pool=pool)
    subscriber = Collector()
    node = RedisChannelLog(client, prefix=PREFIX, on_publication=subscriber.on_publication,
                           on_resync=subscriber.on_resync)
    await node.subscribe(["a"])
    result = await node.publish("a", b"1")
    await eventually(lambda: subscriber.offsets("a") == [1], what="the notification")
    assert (await node.history("a", limit=10)).position == result.position
    await node.close()
    await client.aclose()


# ------------------------------------------------------------------ Redis Cluster only


def _channel_on(cluster, node, avoid: str = "") -> str:
    """A channel name whose slot belongs to primary ``node``."""
    for i in range(10_000):
        name = f"room-{i}"
        if name != avoid and cluster.primary_for(channel_keys(PREFIX, name).meta).port == node.port:
            return name
    raise LookupError("no channel name maps to that node")


async def _publish_until_done(log: RedisChannelLog, channel: str, data: bytes, key: str) -> PublishResult:
    """Publish through a failover the way an application does: retry with the same
    idempotency key until Redis answers (it is applied once)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return await log.publish(channel, data, idempotency_key=key)
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_cluster_failover_resubscribes_on_the_new_primary_and_signals_a_gap_read(own_redis_cluster):
    cluster = own_redis_cluster
    victim, bystander_node = cluster.primaries()[:2]
    lost_channel = _channel_on(cluster, victim)
    kept_channel = _channel_on(cluster, bystander_node)
    subscriber = Collector()
    node_client = RedisCluster.from_url(cluster.url)
    node = RedisChannelLog(node_client, prefix=PREFIX, sharded=True, on_publication=subscriber.on_publication,
                           on_resync=subscriber.on_resync)
    publisher_client = RedisCluster.from_url(f"redis://127.0.0.1:{bystander_node.port}/0")
    publisher = RedisChannelLog(publisher_client, prefix=PREFIX, sharded=True)
    await node.subscribe([lost_channel, kept_channel])
    epoch = (await publisher.publish(lost_channel, b"1")).position.epoch
    await publisher.publish(kept_channel, b"1")
    await eventually(lambda: len(subscriber.publications) == 2, what="the first notifications")
    cluster.wait_healthy()  # the replicas have everything: the failover loses nothing

    victim.kill()
    second = await _publish_until_done(publisher, lost_channel, b"2", "second")
    await _publish_until_done(publisher, kept_channel, b"2", "kept-second")
    cluster.wait_failover(victim)
    assert second.position == StreamPosition(2, epoch)  # the replica carried the channel on
    await eventually(lambda: lost_channel in subscriber.resyncs, timeout=30,
                     what="a resync of the channel whose primary died")
    # The owner's gap read after the resync, merged with what was notified.
    last = max(subscriber.offsets(lost_channel))
    gap = await node.history(lost_channel, since=StreamPosition(last, epoch), limit=10)
    assert gap.recoverable
    delivered = sorted(set(subscriber.offsets(lost_channel)) | {p.offset for p in gap.publications})
    assert delivered == [1, 2]
    # Notifications flow again, from the new primary; the other shard never stopped.
    await _publish_until_done(publisher, lost_channel, b"3", "third")
    await eventually(lambda: 3 in subscriber.offsets(lost_channel), timeout=30,
                     what="a notification from the new primary")
    await eventually(lambda: subscriber.offsets(kept_channel) == [1, 2], what="the bystander channel")
    await node.close()
    await node_client.aclose()
    await publisher_client.aclose()


async def test_a_planned_failover_moves_the_subscription_to_the_new_primary(redis_cluster, cluster_url):
    """Redis drops a shard channel's subscribers when its slot changes owner (the connection
    stays up): the subscription follows the slot and the owner is told to resync."""
    primary = redis_cluster.primaries()[0]
    channel = _channel_on(redis_cluster, primary)
    subscriber = Collector()
    client = RedisCluster.from_url(cluster_url)
    node = RedisChannelLog(client, prefix=PREFIX, sharded=True, on_publication=subscriber.on_publication,
                           on_resync=subscriber.on_resync)
    publisher_client = RedisCluster.from_url(cluster_url)
    publisher = RedisChannelLog(publisher_client, prefix=PREFIX, sharded=True)
    await node.subscribe([channel])
    epoch = (await publisher.publish(channel, b"1")).position.epoch
    await eventually(lambda: subscriber.offsets(channel) == [1], what="the first notification")
    redis_cluster.wait_healthy()

    redis_cluster.manual_failover(primary)
    await eventually(lambda: subscriber.resyncs == [channel], timeout=30, what="a resync after the switch")
    second = await _publish_until_done(publisher, channel, b"2", "second")
    assert second.position == StreamPosition(2, epoch)
    await eventually(lambda: subscriber.offsets(channel) == [1, 2], timeout=30,
                     what="a notification from the new primary")
    await node.close()
    await client.aclose()
    await publisher_client.aclose()


# ------------------------------------------------------------------ replicas_ack (WAIT)


async def test_replicas_ack_on_a_cluster_acks_once_the_replica_has_it(redis_cluster, cluster_url):
    """Every primary of the test cluster has one replica: WAIT 1 answers at once, on the
    primary that ran the script (a WAIT sent elsewhere would answer for nothing)."""
    client = RedisCluster.from_url(cluster_url)
    log = RedisChannelLog(client, prefix=PREFIX, sharded=True, replicas_ack=1, replicas_ack_timeout=2.0)
    channels = [_channel_on(redis_cluster, node) for node in redis_cluster.primaries()]
    for channel in channels:
        first = await log.publish(channel, b"1", idempotency_key="k")
        again = await log.publish(channel, b"1", idempotency_key="k")
        assert again.duplicate and again.position == first.position
        second = await log.publish(channel, b"2")
        assert second.position.offset == 2
        # the replica of the channel's primary already holds both entries
        replica = redis_cluster.replica_of(redis_cluster.primary_for(channel_keys(PREFIX, channel).meta))
        replica.client().execute_command("READONLY")
        assert replica.client().xlen(channel_keys(PREFIX, channel).stream) == 2
    # the script unknown to the primaries (a restart, SCRIPT FLUSH): loaded and sent again
    for primary in redis_cluster.primaries():
        primary.cli("SCRIPT", "FLUSH")
    assert (await log.publish(channels[0], b"3")).position.offset == 3
    await log.close()
    await client.aclose()


async def test_replicas_ack_without_enough_replicas_is_not_acked_and_a_retry_appends_nothing(redis_url):
    """A single Redis has no replica: the publish reaches it but is not acknowledged."""
    client = aioredis.from_url(redis_url)
    log = RedisChannelLog(client, prefix=PREFIX, replicas_ack=1, replicas_ack_timeout=0.2)
    started = time.monotonic()
    with pytest.raises(NotReplicatedError, match="0 of 1 replicas"):
        await log.publish("room", b"x", idempotency_key="k")
    assert time.monotonic() - started >= 0.2  # WAIT waited its timeout
    with pytest.raises(NotReplicatedError):
        await log.publish("room", b"x", idempotency_key="k")  # the retry of an application
    assert await client.xlen(channel_keys(PREFIX, "room").stream) == 1
    await client.script_flush()
    with pytest.raises(NotReplicatedError):
        await log.publish("room", b"y")
    assert await client.xlen(channel_keys(PREFIX, "room").stream) == 2
    plain = RedisChannelLog(client, prefix=PREFIX)  # replicas_ack = 0: acked by the master alone
    assert (await plain.publish("room", b"z")).position.offset == 3
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError):
            RedisChannelLog(client, prefix=PREFIX, replicas_ack=bad)
    await log.close()
    await plain.close()
    await client.aclose()


async def test_the_position_reads_of_one_turn_reach_redis_as_one_pipeline(redis_url):
    """Each connect reads the position of the channel its socket joins (its user's room): the
    reads of one loop turn, and the turn's publishes, go through the log's command batcher, one
    connection for all (sent alone, thirty concurrent reads take thirty)."""
    client, observer = aioredis.from_url(redis_url), aioredis.from_url(redis_url)
    log = RedisChannelLog(client, prefix=PREFIX)
    for i in range(3):
        await log.publish("user:2", b"%d" % i)
    await client.connection_pool.disconnect()
    before = int((await observer.info("stats"))["total_connections_received"])
    reads = await asyncio.gather(*(log.positions([f"user:{i}"]) for i in range(30)), log.position("user:2"),
                                 log.positions(["user:2", "user:5"]), log.publish("user:7", b"x"))
    assert int((await observer.info("stats"))["total_connections_received"]) - before == 1
    epoch = reads[30].epoch
    assert reads[30] == StreamPosition(3, epoch) and reads[2] == [reads[30]]
    assert [r for i, r in enumerate(reads[:30]) if i != 2] == [[EMPTY]] * 29  # user:7 read before the publish issued after it
    assert reads[31] == [reads[30], EMPTY] and reads[32].position.offset == 1
    await log.close()
    await client.aclose()
    await observer.aclose()


async def test_batched_publishes_survive_cancellation_flushed_scripts_errors_and_killed_connections(redis_client):
    """A plain client's publishes go through the log's command batcher (redis_batch.py, not
    redis-py's command path): a publish cancelled before its batch is sent is left out of it;
    an unknown script (SCRIPT FLUSH) is loaded; a script error fails only its own publish; a
    connection Redis closed is replaced. Every publish gets its own offset, in order.
    (A cancellation while the reply is on the way: tests/test_redis_batch.py.)"""
    log = RedisChannelLog(redis_client, prefix=PREFIX)
    assert (await log.publish("room", b"1")).position.offset == 1
    task = asyncio.get_running_loop().create_task(log.publish("room", b"never"))
    await asyncio.sleep(0)  # its command is queued; the batch goes on the next turn
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await log.publish("room", b"2")).position.offset == 2
    await redis_client.script_flush()
    assert (await log.publish("room", b"3")).position.offset == 3
    await redis_client.hset(channel_keys(PREFIX, "bad").meta, mapping={"e": "x y", "o": "1"})
    bad = asyncio.ensure_future(log.publish("bad", b"x"))
    good = asyncio.ensure_future(log.publish("room", b"4"))  # in the same batch
    with pytest.raises(ChannelLogError):
        await bad
    assert (await good).position.offset == 4
    await redis_client.client_kill_filter(_type="normal", skipme=True)
    with contextlib.suppress(Exception):  # the batch that meets the killed connection fails
        await log.publish("room", b"5")
    offset = (await log.publish("room", b"6")).position.offset
    stored = [p.data for p in (await log.history("room", since=EMPTY, limit=10)).publications]
    assert stored[:4] == [b"1", b"2", b"3", b"4"] and stored[-1] == b"6" and offset == len(stored)
    await log.close()


async def test_subscribe_new_is_written_then_notified_and_never_resynced(backend):
    """subscribe_new (names nobody can have published to: a new socket's own room) does not
    wait: the names are written with the others (``subscriptions_written`` says when), so a
    publication another node makes after that is notified, and Redis's confirmation signals
    no resync (nothing can have been missed before it)."""
    subscriber = Collector()
    node = backend.make(subscriber=subscriber)
    publisher = backend.make()
    # A node with sockets: its pub/sub connections are up (30 names reach every shard of a
    # cluster or of ``shards``; a new connection would subscribe them with a resync instead).
    await node.subscribe([f"warm{i}" for i in range(30)])
    assert node.subscribe_new(["new1", "new2", "new3"]) is True
    written = node.subscriptions_written()
    if backend.kind != "memory":
        assert written is not None
        assert not node.confirmed("new1")
        await written
    assert node.subscriptions_written() is None  # written
    for channel in ("new1", "new2", "new3"):
        await publisher.publish(channel, b"first")
    await eventually(lambda: all(subscriber.offsets(c) == [1] for c in ("new1", "new2", "new3")),
                     what="a notification on each new channel")
    await eventually(lambda: node.confirmed("new1") and node.confirmed("new3"), what="the confirmations")
    assert subscriber.resyncs == []
    # A name subscribed already is left as it is (no second subscription, no resync).
    assert node.subscribe_new(["new1"]) is True
    assert node.confirmed("new1")


# A node's own channels (realtime_channels.routes): a socket's room and a minted guest's.
MINE = ["/chat|nodeAA" + "s" * 20, "/chat|user:guest-nodeAA0123456789ab"]


async def test_a_held_route_announces_each_of_its_channels_subscribed_or_not(backend):
    """subscribe_route: every channel routed to the tag is announced without a subscription
    of its own; channels of another route, and plain ones, are not; unsubscribing a channel
    of the route leaves the route held."""
    subscriber, resyncs = Collector(), []
    node = backend.make(subscriber=subscriber, fresh=True)
    publisher = backend.make()  # (memory: the same log)
    await node.subscribe_route("nodeAA", lambda: resyncs.append("route"))
    others = ["/chat|nodeBB" + "s" * 20, "/chat|user:guest-nodeBB0123456789ab", "/chat|room"]
    for channel in others + MINE:
        await publisher.publish(channel, b"1")
    await eventually(lambda: all(subscriber.offsets(c) == [1] for c in MINE), what="both channels of the route")
    await node.subscribe([MINE[0]])
    await node.unsubscribe([MINE[0]])
    await publisher.publish(MINE[0], b"2")
    await eventually(lambda: subscriber.offsets(MINE[0]) == [1, 2], what="the route after an unsubscribe")
    await asyncio.sleep(0.2)
    assert [c for c, _ in subscriber.publications if c in others] == [] and resyncs == []
    with pytest.raises(ValueError):
        await node.subscribe_route("nodeA{", lambda: None)


async def test_a_held_routes_lost_notifications_are_signalled_once_for_the_route(redis_url):
    """Notifications of a held route missed while its connection was down: the route's
    ``on_resync`` is called (once), so the owner reads its channels, subscribed or not."""
    subscriber, resyncs = Collector(), []
    client, admin = aioredis.from_url(redis_url), aioredis.from_url(redis_url)
    node = RedisChannelLog(client, prefix=PREFIX, on_publication=subscriber.on_publication,
                           on_resync=subscriber.on_resync)
    await node.subscribe_route("nodeAA", lambda: resyncs.append("route"))
    await kill_and_publish(admin, PREFIX, node.bounds, [(MINE[1], b"1"), (MINE[1], b"2")])
    await eventually(lambda: resyncs == ["route"], what="the route's resync")
    assert subscriber.publications == [] and subscriber.resyncs == []
    assert [p.data for p in (await node.history(MINE[1], since=EMPTY, limit=10)).publications] == [b"1", b"2"]
    await RedisChannelLog(admin, prefix=PREFIX).publish(MINE[1], b"3")
    await eventually(lambda: subscriber.offsets(MINE[1]) == [3], what="the route announcing again")
    await node.close()
    await admin.aclose()
    await client.aclose()


async def test_subscribe_new_on_a_cluster_waits_for_its_topology(cluster_url):
    """On a Redis Cluster, subscribe_new routes each name to its shard from the client's
    topology; until that is loaded (redis-py's private ``RedisCluster._initialize`` is True,
    also again after a connection error) it declines, and the caller subscribes and waits.
    Names the private attribute: if redis-py renames it or changes its meaning, this fails."""
    client = RedisCluster.from_url(cluster_url)
    node = RedisChannelLog(client, prefix=PREFIX, sharded=True)
    assert client._initialize is True
    assert node.subscribe_new(["topology-unknown"]) is False
    assert node.subscriptions_written() is None  # nothing queued
    await node.subscribe(["topology-warm-up"])  # loads the topology
    assert client._initialize is False
    assert node.subscribe_new(["topology-known"]) is True
    written = node.subscriptions_written()
    assert written is not None  # something was queued
    await written
    await eventually(lambda: node.confirmed("topology-known"), what="the confirmation")
    await node.close()
    await client.aclose()


async def test_one_cancelled_waiter_for_a_write_leaves_the_others_and_later_writes_alone(redis_client, redis_url):
    """Each caller of ``subscriptions_written`` has its own future: one cancelled (its connect
    abandoned) neither cancels the others' nor stops the task that sends; and a log closed
    before that task's first step leaves nobody waiting."""
    subscriber = Collector()
    node = RedisChannelLog(aioredis.from_url(redis_url), prefix=PREFIX, subscribe_pace=0.3,
                           on_publication=subscriber.on_publication, on_resync=subscriber.on_resync)
    publisher = RedisChannelLog(redis_client, prefix=PREFIX)
    await node.subscribe(["waiters-warm-up"])  # the pub/sub connection is made (with this name)
    await node.subscribe(["waiters-warm-up-2"])  # a write on it: the next ones wait for the pace
    assert node.subscribe_new(["waiters-a"])
    abandoned = asyncio.ensure_future(asyncio.wait_for(node.subscriptions_written(), 0.01))
    assert node.subscribe_new(["waiters-b"])
    kept = node.subscriptions_written()
    with pytest.raises(asyncio.TimeoutError):
        await abandoned
    await kept
    assert node.subscribe_new(["waiters-c"])  # the sending task carries on
    later = node.subscriptions_written()
    assert later is not None
    await later
    for name in ("waiters-a", "waiters-b", "waiters-c"):
        await publisher.publish(name, b"x")
    await eventually(lambda: sorted(c for c, _ in subscriber.publications) == ["waiters-a", "waiters-b", "waiters-c"],
                     what="a notification of each")
    assert node.subscribe_new(["waiters-d"])
    pending = node.subscriptions_written()
    await node.close()  # before the sending task ran
    assert pending is not None and pending.done()
    await node.client.aclose()


async def test_a_new_name_sent_while_its_connection_is_busy_gets_a_resync(redis_client, redis_url):
    """A subscribe_new name whose pub/sub connection is being made (or busy) when its turn is
    sent: its writers are not held up by that connection, and since a publication may then
    precede the subscription, its confirmation signals a resync (the owner reads the history)."""
    subscriber = Collector()
    node = RedisChannelLog(aioredis.from_url(redis_url), prefix=PREFIX,
                           on_publication=subscriber.on_publication, on_resync=subscriber.on_resync)
    await node.subscribe(["busy-warm-up"])
    (link,) = node._subscriptions._links.values()  # one Redis: one link
    async with link.lock:  # as while its connection is being replaced
        assert node.subscribe_new(["busy-new"])
        written = node.subscriptions_written()
        assert written is not None
        await asyncio.wait_for(written, 5)  # not held by the busy connection
        assert subscriber.resyncs == []
    await eventually(lambda: subscriber.resyncs == ["busy-new"], what="the resync of the name sent late")
    assert node.confirmed("busy-new")
    await node.close()
    await node.client.aclose()


async def test_subscription_writes_are_paced_under_load(redis_client, redis_url):
    """Every write wakes Redis (on a core shared with the server, it preempts it): names asked
    for within ``subscribe_pace`` of the last write wait for it and share the next write,
    however many loop turns they came in; a name asked for after a quiet spell is written by
    the next turn. A publication made once ``subscriptions_written`` returned is heard."""
    pace = 0.5  # long enough that the burst below fits in it on a loaded machine
    subscriber = Collector()
    node = RedisChannelLog(aioredis.from_url(redis_url), prefix=PREFIX, subscribe_pace=pace,
                           on_publication=subscriber.on_publication, on_resync=subscriber.on_resync)
    publisher = RedisChannelLog(redis_client, prefix=PREFIX)
    await node.subscribe(["paced-warm-up"])  # the pub/sub connection exists
    await asyncio.sleep(pace)
    before = await calls_of(redis_client, "subscribe")
    assert node.subscribe_new(["paced-quiet"])
    await asyncio.sleep(0)
    assert node.subscriptions_written() is None  # a quiet spell: written by the next turn
    started = time.monotonic()
    waits = []
    for i in range(20):  # 20 connects in 20 turns, right after that write
        assert node.subscribe_new([f"paced-{i}"])
        waits.append(node.subscriptions_written())
        await asyncio.sleep(0)
    assert all(w is not None and not w.done() for w in waits)
    await asyncio.gather(*waits)
    assert time.monotonic() - started >= pace * 0.8  # they waited for the pace
    assert await calls_of(redis_client, "subscribe") - before == 2  # the quiet one, then the 20
    for name in ("paced-quiet", "paced-0", "paced-19"):
        await publisher.publish(name, b"after the write")
    await eventually(lambda: sorted(c for c, _ in subscriber.publications) == ["paced-0", "paced-19", "paced-quiet"],
                     what="a notification of each channel published once its write was done")
    assert subscriber.resyncs == []
    await node.close()
    await node.client.aclose()
