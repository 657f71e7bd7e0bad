"""RedisSessionStore.save_many on a real redis-server: a batch of sessions reaches Redis as one
script call per instance (no SET of its own), each session is then taken back whole with its
TTL set, a refused batch raises, and a flushed script cache is reloaded. What reached
Redis is read from Redis itself (INFO commandstats), not from the store."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from harness import calls_of
from server.sessions import RedisSessionStore, SavedSession
from server.stores import redis_client


def saved(pid: str) -> SavedSession:
    return SavedSession(sid=f"s-{pid}", pid=pid, namespace="/chat", data={"user": pid},
                        positions={"room:a": (3, "e1")})


async def test_fifty_saves_are_one_script_call_and_round_trip_with_their_ttl(clients):
    client, observer = clients
    store = RedisSessionStore(client, "t1")
    await store.save_many([saved("warm")], 30)  # loads the script once, outside the counted part
    await observer.config_resetstat()
    await store.save_many([saved(f"p{i}") for i in range(50)], 30)
    assert await calls_of(observer, "evalsha") == 1
    # The SETs run inside the script (commandstats counts them as set calls): 50, none besides.
    assert await calls_of(observer, "set") == 50
    assert 0 < await observer.pttl("t1:session:p17") <= 30_000
    assert 0 < await observer.pttl("t1:session:p49") <= 30_000
    assert [await store.take(f"p{i}") for i in range(50)] == [saved(f"p{i}") for i in range(50)]
    assert await store.take("p3") is None  # taken once


async def test_a_batch_larger_than_a_chunk_is_one_call_per_chunk(clients):
    from server.sessions import SAVE_MANY_CHUNK
    client, observer = clients
    store = RedisSessionStore(client, "t2")
    await store.save_many([saved("warm")], 30)
    await observer.config_resetstat()
    await store.save_many([saved(f"p{i}") for i in range(SAVE_MANY_CHUNK + 1)], 30)
    assert await calls_of(observer, "evalsha") == 2
    assert await store.take(f"p{SAVE_MANY_CHUNK}") == saved(f"p{SAVE_MANY_CHUNK}")


async def test_a_refused_batch_raises_to_its_caller(clients):
    client, observer = clients
    store = RedisSessionStore(client, "t3")
    # SET refuses no key type, so the error is Redis refusing writes (NOREPLICAS: it is told
    # to write only with a replica, and has none).
    await observer.config_set("min-replicas-to-write", 1)
    try:
        with pytest.raises(ResponseError, match="NOREPLICAS"):
            await store.save_many([saved("a"), saved("b")], 30)
    finally:
        await observer.config_set("min-replicas-to-write", 0)
    assert await observer.exists("t3:session:a", "t3:session:b") == 0
    await store.save_many([saved("a"), saved("b")], 30)
    assert await store.take("b") == saved("b")


async def test_after_script_flush_the_batch_reloads_the_script(clients):
    client, observer = clients
    store = RedisSessionStore(client, "t4")
    await store.save_many([saved("a")], 30)
    await observer.script_flush()
    await store.save_many([saved("b"), saved("c")], 30)
    assert await store.take("b") == saved("b") and await store.take("c") == saved("c")


async def test_sharded_saves_are_one_script_call_per_instance(redis_shards, shards_url):
    from realtime_channels.sharding import shard_of
    client = redis_client(shards_url)
    try:
        store = RedisSessionStore(client, "t5")
        await store.save_many([saved(f"w{i}") for i in range(60)], 30)  # the script loaded everywhere
        for server in redis_shards:
            server.cli("CONFIG", "RESETSTAT")
        await store.save_many([saved(f"p{i}") for i in range(50)], 30)
        seen = 0
        for index, server in enumerate(redis_shards):
            observer = aioredis.Redis(port=server.port)
            try:
                keys = [k async for k in observer.scan_iter(match="t5:session:p*")]
                assert keys and {shard_of(k, 3) for k in keys} == {index}
                assert await calls_of(observer, "evalsha") == 1
                assert await calls_of(observer, "set") == len(keys)  # inside the script only
                assert 0 < await observer.pttl(keys[0]) <= 30_000
                seen += len(keys)
            finally:
                await observer.aclose()
        assert seen == 50
        assert [await store.take(f"p{i}") for i in range(50)] == [saved(f"p{i}") for i in range(50)]
    finally:
        await client.aclose()
