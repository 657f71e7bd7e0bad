"""Routing over several independent Redis instances (``redis+shards://``): the one definition
the server and the emitters share must be stable, spread names, keep a channel's names
together and move few channels when an instance is added; the client built on it must put
each key where the routing says, on real redis-servers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
import redis

from harness import RedisServer
from realtime_channels.channel_log import ChannelBounds
from realtime_channels.redis_channel_log import NotReplicatedError, RedisChannelLog, channel_keys, idempotency_key_name
from realtime_channels.sharded_redis import ShardedRedis
from realtime_channels.sharding import hash_tag, jump_hash, shard_of, shard_urls
from server.config import ConfigError, load_config
from server.stores import build_stores, redis_client

CHANNELS = [f"/chat|room:{i}" for i in range(6000)]
# Where the first channels of a 3-instance deployment live. A change here would move live
# deployments' channels (and strand their history): never change the routing.
GOLDEN = [1, 1, 0, 2, 1, 0, 0, 1]


def test_jump_hash_matches_the_published_algorithm():
    # Vectors of other implementations of Lamping & Veach's function (the Python ``jump``
    # package, Microsoft's TypeScript one): the same key always meant the same bucket.
    assert jump_hash(256, 1024) == 520
    assert jump_hash(10863919174838991, 11) == 6
    assert jump_hash(2016238256797177309, 11) == 3
    assert jump_hash(1673758223894951030, 11) == 5
    assert {jump_hash(k, 1) for k in range(100)} == {0}


def test_the_hash_tag_is_read_as_redis_cluster_reads_it():
    assert hash_tag("rt:{/chat|room:a}:stream") == b"/chat|room:a"
    assert hash_tag(b"rt:{bus}") == b"bus"
    assert hash_tag("rt:session:P1") == b"rt:session:P1"  # no tag: the whole name
    assert hash_tag("a{}b{c}") == b"a{}b{c}"               # an empty first tag: the whole name
    assert hash_tag("a{b}{c}") == b"b"                     # the first one only


def test_every_name_of_a_channel_routes_to_one_instance():
    for channel in CHANNELS[:200]:
        keys = channel_keys("rt", channel)
        names = [keys.stream, keys.meta, keys.notify, idempotency_key_name("rt", channel, "k1")]
        assert len({shard_of(n, 3) for n in names}) == 1, channel


def test_routing_is_the_same_in_another_process():
    """Not ``hash()`` (salted per process): a node and an emitter elsewhere agree."""
    here = [shard_of(f"rt:{{{c}}}:stream", 5) for c in CHANNELS[:300]]
    code = ("import json, sys; from realtime_channels.sharding import shard_of; "
            "print(json.dumps([shard_of(f'rt:{{{c}}}:stream', 5) for c in json.loads(sys.stdin.read())]))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], input=repr(CHANNELS[:300]).replace("'", '"'),
                         capture_output=True, text=True, env=env, check=True)
    assert [int(x) for x in out.stdout.strip()[1:-1].split(",")] == here
    # And across releases: these channels live on these instances of a 3-instance deployment.
    assert [shard_of(f"rt:{{/chat|room:{i}}}:stream", 3) for i in range(8)] == GOLDEN



def test_channels_spread_evenly_over_the_instances():
    for count in (2, 3, 5):
        per = [0] * count
        for channel in CHANNELS:
            per[shard_of(f"rt:{{{channel}}}:meta", count)] += 1
        expected = len(CHANNELS) / count
        assert all(abs(n - expected) < 0.1 * expected for n in per), (count, per)


def test_adding_an_instance_moves_about_one_channel_in_n_and_only_to_it():
    for count in (2, 3, 4):
        before = [shard_of(c, count) for c in CHANNELS]
        after = [shard_of(c, count + 1) for c in CHANNELS]
        moved = [(a, b) for a, b in zip(before, after) if a != b]
        assert {b for _, b in moved} == {count}  # every moved channel went to the new instance
        share = len(moved) / len(CHANNELS)
        assert abs(share - 1 / (count + 1)) < 0.03, (count, share)


def test_a_sharded_url_lists_each_instance_with_the_shared_credentials_and_database():
    assert shard_urls("redis+shards://h1:1,h2:2/3") == ["redis://h1:1/3", "redis://h2:2/3"]
    assert shard_urls("rediss+shards://u:p%40w@h1:1,h2:2?ssl_cert_reqs=none") == [
        "rediss://u:p%40w@h1:1?ssl_cert_reqs=none", "rediss://u:p%40w@h2:2?ssl_cert_reqs=none"]
    assert shard_urls("valkey+shards://a:1") == ["redis://a:1"]
    for bad in ("redis+shards://h1,h2:2", "redis+shards://h1:1,h1:1", "redis+shards://h1:1/x",
                "redis+shards://", "redis://h1:1"):
        with pytest.raises(ValueError):
            shard_urls(bad)


@pytest.mark.parametrize("url, message", [
    ("redis+shards://h1:6379,h2", "host:port"),
    ("redis+shards://h1:6379,h1:6379", "twice"),
    ("rediss+shards://h1:6379/zero", "database"),
])
def test_config_refuses_a_bad_sharded_url_with_a_clear_message(url, message):
    with pytest.raises(ConfigError) as info:
        load_config(environ={"REDIS_URL": url})
    assert "REDIS_URL" in str(info.value) and message in str(info.value)


def test_config_takes_a_sharded_url():
    url = "rediss+shards://:pw@10.0.0.1:6379,10.0.0.2:6379,10.0.0.3:6379/0"
    assert load_config(environ={"REDIS_URL": url}).redis.url == url


async def test_each_key_lands_on_the_instance_its_tag_routes_to(redis_shards, shards_url):
    client = redis_client(shards_url)
    assert isinstance(client, ShardedRedis)
    try:
        async with client.pipeline(transaction=False) as pipe:
            for i in range(60):
                pipe.set(f"t:{{c{i}}}:a", b"1")
                pipe.set(f"t:{{c{i}}}:b", b"2")
            assert await pipe.execute() == [True] * 120
        assert await client.dbsize() == 120
        for index, server in enumerate(redis_shards):
            keys = redis.Redis(port=server.port).keys("*")
            assert keys, f"instance {index} holds nothing"
            assert {shard_of(k, 3) for k in keys} == {index}
        # A transaction stays on one instance, or is refused before anything is sent.
        async with client.pipeline(transaction=True) as pipe:
            pipe.get("t:{c1}:a").get("t:{c1}:b")
            assert await pipe.execute() == [b"1", b"2"]
        spread = next(i for i in range(1, 60) if shard_of(f"c{i}", 3) != shard_of("c0", 3))
        async with client.pipeline(transaction=True) as pipe:
            pipe.set("t:{c0}:x", b"1").set(f"t:{{c{spread}}}:x", b"1")
            with pytest.raises(ValueError, match="hash tag"):
                await pipe.execute()
        assert await client.exists("t:{c0}:x", f"t:{{c{spread}}}:x") == 0
        assert await client.delete(*(f"t:{{c{i}}}:a" for i in range(60))) == 60
        keys = [k async for k in client.scan_iter(match="t:*")]
        assert len(keys) == 60
        with pytest.raises(AttributeError, match="does not route"):
            client.keys("*")
    finally:
        await client.aclose()


async def test_readiness_holds_while_one_instance_of_three_answers():
    """A lost instance takes its channels away, not the node: /readyz's ping stays answered
    until no instance answers."""
    instances = [RedisServer().start() for _ in range(3)]
    try:
        url = "redis+shards://" + ",".join(f"127.0.0.1:{s.port}" for s in instances)
        stores = build_stores(load_config(environ={"REDIS_URL": url}))
        try:
            assert await stores.ping() is not None
            instances[1].stop()
            assert await stores.ping() is not None
            instances[0].stop()
            instances[2].stop()
            assert await stores.ping() is None
            instances[2].start()
            assert await stores.ping() is not None
        finally:
            await stores.close()
    finally:
        for server in instances:
            server.cleanup()


async def test_rooms_on_other_instances_carry_on_while_one_restarts(servers, js):
    """One of three instances goes away and comes back (its data on disk): rooms on the
    others keep delivering meanwhile, and the nodes subscribe again on the one that returned,
    so its rooms deliver again — in order, nothing lost that was acknowledged."""
    instances = [RedisServer(appendonly=True).start() for _ in range(3)]
    try:
        url = "redis+shards://" + ",".join(f"127.0.0.1:{s.port}" for s in instances) + "/0"
        rooms: dict[int, str] = {}
        for i in range(100):
            rooms.setdefault(shard_of(channel_keys("rt", f"/chat|room:k{i}").stream, 3), f"k{i}")
        # ({bus} and {nodes} stay up: the restarted instance is another one)
        down = next(i for i in range(3) if i not in (shard_of("rt:{bus}", 3), shard_of("rt:{nodes}", 3)))
        up = next(i for i in range(3) if i != down)
        n1, n2 = servers(env={"REDIS_URL": url}), servers(env={"REDIS_URL": url})
        await js.connect("sub", n1.url + "/chat", transports=["websocket"])
        await js.connect("pub", n2.url + "/chat", transports=["websocket"])
        for name in ("sub", "pub"):
            for room in (rooms[down], rooms[up]):
                assert (await js.emit(name, "join", {"room": room}))["ok"]

        async def say(room: str, text: str) -> dict:
            return await js.emit("pub", "message", {"room": room, "text": text})

        async def texts(room: str) -> list[str]:
            return [e["args"][0]["text"] for e in await js.events("sub", "message") if e["args"][0]["room"] == room]

        assert (await say(rooms[down], "d1"))["ok"] and (await say(rooms[up], "u1"))["ok"]
        await js.wait("sub", "message", 2)
        instances[down].stop()
        assert (await say(rooms[up], "u2"))["ok"]  # the other instances carry on
        assert not (await say(rooms[down], "lost"))["ok"]  # refused, not acknowledged
        await js.wait("sub", "message", 3)
        instances[down].start()
        deadline = asyncio.get_running_loop().time() + 15
        while not (await say(rooms[down], "d2"))["ok"]:
            assert asyncio.get_running_loop().time() < deadline, n2.output()[-2000:]
            await asyncio.sleep(0.3)
        await js.wait("sub", "message", 4, timeout=15000)
        await asyncio.sleep(0.3)
        assert await texts(rooms[up]) == ["u1", "u2"]
        assert await texts(rooms[down]) == ["d1", "d2"]
    finally:
        for server in instances:
            server.cleanup()


async def test_replicas_ack_waits_on_the_instance_that_ran_the_publish():
    """``WAIT`` follows the publish script onto the channel's instance: a channel on the
    instance with a replica is acknowledged, one on the instance without is not (a WAIT sent to
    another connection would count that one's replicas instead)."""
    primaries = [RedisServer().start() for _ in range(2)]
    replica = RedisServer().start()
    try:
        replica.cli("REPLICAOF", "127.0.0.1", str(primaries[0].port))
        url = "redis+shards://" + ",".join(f"127.0.0.1:{s.port}" for s in primaries) + "/0"
        client = redis_client(url)
        deadline = asyncio.get_running_loop().time() + 10
        while redis.Redis(port=replica.port).info("replication").get("master_link_status") != "up":
            assert asyncio.get_running_loop().time() < deadline, "the replica did not connect"
            await asyncio.sleep(0.1)
        log = RedisChannelLog(client, prefix="t", replicas_ack=1, replicas_ack_timeout=0.3)
        on = {shard_of(channel_keys("t", f"room{i}").stream, 2): f"room{i}" for i in range(20)}
        first = await log.publish(on[0], b"x", idempotency_key="k")
        assert first.position.offset == 1 and not first.duplicate
        assert redis.Redis(port=replica.port).xlen(channel_keys("t", on[0]).stream) == 1
        with pytest.raises(NotReplicatedError, match="0 of 1 replicas"):
            await log.publish(on[1], b"y")
        # the script unknown to an instance (a restart, SCRIPT FLUSH): loaded and sent again there
        primaries[0].cli("SCRIPT", "FLUSH")
        assert (await log.publish(on[0], b"z")).position.offset == 2
        await log.close()
        await client.aclose()
    finally:
        for server in (*primaries, replica):
            server.cleanup()


async def test_trim_expired_visits_every_instance(shards_url):
    """The sweep of expired entries scans each instance: channels on all three are trimmed."""
    client = ShardedRedis.from_url(shards_url)
    log = RedisChannelLog(client, prefix="t", bounds=ChannelBounds(max_length=100, max_age=2.0, dedupe_ttl=60.0))
    on = {shard_of(channel_keys("t", f"room{i}").stream, 3): f"room{i}" for i in range(30)}
    assert sorted(on) == [0, 1, 2]
    try:
        for room in on.values():
            await log.publish(room, b"old")
        await asyncio.sleep(1.2)
        for room in on.values():
            await log.publish(room, b"new")
        await asyncio.sleep(1.2)  # "old" is past max_age, "new" is not
        assert await log.trim_expired() == 3
        for room in on.values():
            assert await client.xlen(channel_keys("t", room).stream) == 1
    finally:
        await log.close()
        await client.aclose()
