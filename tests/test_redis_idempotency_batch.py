"""RedisIdempotencyStore on a real redis-server: the claims of one loop turn reach Redis as one
script call, the completions as another; each key is still claimed atomically and once (also
by two stores racing), a key's own error fails only its caller, a cancelled caller is left out.
What reached Redis is read from Redis itself (INFO commandstats), not from the store."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from harness import calls_of
from server.idempotency import PENDING, RedisIdempotencyStore
from server.stores import redis_client


@pytest.fixture
async def clients(own_redis):
    """(two server clients, as two nodes have; a client for looking at Redis), closed after."""
    made = [redis_client(own_redis.url), redis_client(own_redis.url), aioredis.Redis.from_url(own_redis.url)]
    yield made
    for c in made:
        await c.aclose()


async def test_one_turn_of_claims_and_completions_is_one_script_call_each(clients):
    client, _, observer = clients
    store = RedisIdempotencyStore(client, "t1")
    await store.claim("warm", 30)  # loads the scripts once, outside the counted part
    await store.complete("warm", None, 30)
    await observer.config_resetstat()
    results = await asyncio.gather(*[store.claim(f"e{i}", 30) for i in range(50)])
    assert results == [(True, None)] * 50
    assert await calls_of(observer, "evalsha") == 1
    await asyncio.gather(*[store.complete(f"e{i}", {"n": i}, 30) for i in range(50)])
    assert await calls_of(observer, "evalsha") == 2
    assert await calls_of(observer, "set") == 100  # inside the scripts: 50 claims + 50 acks
    again = await asyncio.gather(*[store.claim(f"e{i}", 30) for i in range(50)])
    assert again == [(False, {"n": i}) for i in range(50)]
    ttl = await observer.pttl("t1:dedupe:e7")
    assert 0 < ttl <= 30_000


async def test_duplicate_ids_across_two_stores_are_claimed_once(clients):
    a_client, b_client, _ = clients
    a, b = RedisIdempotencyStore(a_client, "t2"), RedisIdempotencyStore(b_client, "t2")
    ids = [f"d{i}" for i in range(40)]
    # Each id claimed twice by each node, all in the same turn.
    results = await asyncio.gather(*[s.claim(k, 30) for k in ids for s in (a, b, a, b)])
    for n, k in enumerate(ids):
        fresh = [r for r in results[4 * n:4 * n + 4] if r == (True, None)]
        assert len(fresh) == 1, k
        assert all(r == (False, PENDING) for r in results[4 * n:4 * n + 4] if r != (True, None))


async def test_a_keys_error_fails_only_its_own_claim(clients):
    client, _, observer = clients
    store = RedisIdempotencyStore(client, "t3")
    await observer.hset("t3:dedupe:bad", "f", "v")  # GET on it: WRONGTYPE
    results = await asyncio.gather(store.claim("ok1", 30), store.claim("bad", 30), store.claim("ok2", 30),
                                   return_exceptions=True)
    assert results[0] == (True, None) and results[2] == (True, None)
    assert isinstance(results[1], ResponseError) and "WRONGTYPE" in str(results[1])
    await observer.delete("t3:dedupe:bad")
    await observer.set("t3:dedupe:bad", "x")
    await observer.lpush("t3:dedupe:list", "x")
    done = await asyncio.gather(store.complete("ok1", 1, 30), store.complete("ok2", 2, 30),
                                return_exceptions=True)
    assert done == [None, None]
    assert (await store.claim("ok2", 30)) == (False, 2)


async def test_a_claim_cancelled_before_the_send_is_left_out(clients):
    client, _, observer = clients
    store = RedisIdempotencyStore(client, "t4")
    gone = asyncio.ensure_future(store.claim("gone", 30))
    kept = asyncio.ensure_future(store.claim("kept", 30))
    await asyncio.sleep(0)  # both queued in this store's turn
    gone.cancel()
    assert await kept == (True, None)
    assert await observer.exists("t4:dedupe:gone") == 0


async def test_after_script_flush_the_batched_calls_reload(clients):
    client, _, observer = clients
    store = RedisIdempotencyStore(client, "t5")
    assert await store.claim("a", 30) == (True, None)
    await observer.script_flush()
    assert await asyncio.gather(store.claim("a", 30), store.claim("b", 30)) == [(False, PENDING), (True, None)]
    await observer.script_flush()
    await store.complete("b", "ack", 30)
    assert await store.claim("b", 30) == (False, "ack")


async def test_sharded_claims_are_one_script_call_per_instance(redis_shards, shards_url):
    from realtime_channels.sharding import shard_of
    client = redis_client(shards_url)
    try:
        store = RedisIdempotencyStore(client, "t6")
        await asyncio.gather(*[store.claim(f"w{i}", 30) for i in range(60)])  # scripts loaded everywhere
        await asyncio.gather(*[store.complete(f"w{i}", 1, 30) for i in range(60)])
        for server in redis_shards:
            server.cli("CONFIG", "RESETSTAT")
        assert await asyncio.gather(*[store.claim(f"s{i}", 30) for i in range(60)]) == [(True, None)] * 60
        for index, server in enumerate(redis_shards):
            observer = aioredis.Redis(port=server.port)
            try:
                assert await calls_of(observer, "evalsha") == 1
                keys = [k async for k in observer.scan_iter(match="t6:dedupe:s*")]
                assert keys and {shard_of(k, 3) for k in keys} == {index}
            finally:
                await observer.aclose()
    finally:
        await client.aclose()
