"""CommandBatcher on a real redis-server: one turn's commands reach Redis as one pipeline on one
connection; reply errors, a killed connection and cancelled callers affect only their own
commands or batch; scripts survive SCRIPT FLUSH. What reached Redis is read from Redis itself
(INFO, MONITOR, CLIENT LIST), not from the batcher's state."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError, DataError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from harness import monitored
from realtime_channels.redis_batch import CommandBatcher, DirectCommands, ShardedBatcher, batcher_for
from server.stores import redis_client


async def connections_received(observer: aioredis.Redis) -> int:
    return int((await observer.info("stats"))["total_connections_received"])


async def test_one_turn_of_commands_is_one_pipeline_on_one_connection(clients, own_redis):
    client, observer = clients
    batcher = batcher_for(client)
    assert isinstance(batcher, CommandBatcher)
    opened = []

    async def fifty():
        before = await connections_received(observer)
        replies = await asyncio.gather(*(batcher.command("SET", f"k{i}", i) for i in range(50)))
        assert replies == [True] * 50
        opened.append(await connections_received(observer) - before)

    async with monitored(own_redis.url) as seen:
        await fifty()
    sets = [s for s in seen if s["command"].startswith("SET k")]
    assert len(sets) == 50
    # All fifty from one client connection, in the order they were issued...
    assert len({s["client_address"] + ":" + str(s["client_port"]) for s in sets}) == 1
    assert [s["command"].split()[1] for s in sets] == [f"k{i}" for i in range(50)]
    # ...which the pool opened once (sent alone, fifty concurrent commands take fifty).
    assert opened == [1]
    assert await observer.get("k49") == b"49"


async def test_a_batch_is_bounded(clients):
    client, observer = clients
    batcher = CommandBatcher(client, max_batch=10)
    before = await connections_received(observer)
    replies = await asyncio.gather(*(batcher.command("INCR", "n") for _ in range(25)))
    # Three batches (10, 10, 5), sent concurrently (in any order): three connections.
    assert sorted(replies) == list(range(1, 26))
    assert sorted(replies[:10]) == replies[:10] and sorted(replies[20:]) == replies[20:]
    assert await connections_received(observer) - before == 3


async def test_a_reply_error_fails_only_its_own_command(clients):
    client, observer = clients
    await observer.rpush("list", "x")
    batcher = batcher_for(client)
    ok, wrong, counted = await asyncio.gather(batcher.command("SET", "a", "1"), batcher.command("GET", "list"),
                                              batcher.command("INCR", "n"), return_exceptions=True)
    assert ok is True and counted == 1
    assert isinstance(wrong, ResponseError) and "WRONGTYPE" in str(wrong)
    assert await batcher.command("GET", "a") == b"1"  # the connection is still in step


async def wait_for_blocked(observer: aioredis.Redis) -> None:
    for _ in range(100):
        if any(c.get("cmd") == "blpop" for c in await observer.client_list()):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the batch's BLPOP never blocked")


async def test_a_killed_connection_fails_its_batch_and_the_next_batch_works(clients):
    client, observer = clients
    batcher = batcher_for(client)
    first = batcher.command("SET", "before", "1")
    blocked = batcher.command("BLPOP", "nothing", 0)
    after = batcher.command("SET", "after", "1")
    await wait_for_blocked(observer)
    await observer.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    assert await first is True  # its reply had arrived
    for waiting in (blocked, after):
        with pytest.raises(ConnectionError):
            await waiting
    assert await observer.get("after") is None  # never ran
    assert await asyncio.gather(batcher.command("SET", "next", "1"), batcher.command("GET", "before")) == [True, b"1"]


async def test_a_batch_that_outlasts_socket_timeout_fails_and_the_next_works(own_redis):
    client = redis_client(own_redis.url, socket_timeout=0.3)
    batcher = batcher_for(client)
    quick, slow = batcher.command("SET", "quick", "1"), batcher.command("BLPOP", "nothing", 2)
    assert await quick is True
    with pytest.raises(RedisTimeoutError):
        await slow
    assert await batcher.command("GET", "quick") == b"1"  # a fresh connection, in step
    await client.aclose()


async def test_cancelled_callers_do_not_disturb_the_others(clients):
    client, observer = clients
    batcher = batcher_for(client)
    # Cancelled before its batch is written: left out.
    kept, dropped = batcher.command("SET", "kept", "1"), batcher.command("SET", "dropped", "1")
    dropped.cancel()
    assert await kept is True
    assert await observer.exists("dropped") == 0
    # Cancelled while its batch waits for replies: its reply is read and dropped.
    first = batcher.command("SET", "first", "1")
    slow = batcher.command("BLPOP", "nothing", 0.3)
    last = batcher.command("INCR", "last")
    await wait_for_blocked(observer)
    slow.cancel()
    assert await first is True and await last == 1
    assert await asyncio.gather(batcher.command("GET", "first"), batcher.command("INCR", "last")) == [b"1", 2]


async def test_a_script_in_a_batch_after_script_flush(clients):
    client, observer = clients
    batcher = batcher_for(client)
    script = client.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    assert await asyncio.gather(*(batcher.script(script, ["s"], [1]) for _ in range(5))) == [1, 2, 3, 4, 5]
    await observer.script_flush()
    # Refused with NOSCRIPT, loaded, sent again: each call applied once, in one batch with a plain command.
    replies = await asyncio.gather(*(batcher.script(script, ["s"], [10]) for _ in range(5)),
                                   batcher.command("SET", "plain", "1"))
    assert sorted(replies[:5]) == [15, 25, 35, 45, 55] and replies[5] is True
    assert await observer.get("s") == b"55"
    # A script error is that call's own error.
    failing = client.register_script("return redis.error_reply('nope')")
    bad, good = await asyncio.gather(batcher.script(failing, ["s"]), batcher.script(script, ["s"], [1]),
                                     return_exceptions=True)
    assert isinstance(bad, ResponseError) and good == 56


async def test_the_batcher_for_each_client_kind(shards_url, cluster_url):
    sharded = redis_client(shards_url)
    batcher = batcher_for(sharded)
    assert isinstance(batcher, ShardedBatcher)
    keys = [f"{{tag{i}}}:k" for i in range(30)]
    assert await asyncio.gather(*(batcher.command("SET", k, k) for k in keys)) == [True] * 30
    for k in keys:  # each on the instance ShardedRedis routes it to
        assert await sharded.shard_for(k).get(k) == k.encode()
    await sharded.aclose()
    cluster = redis_client(cluster_url)
    assert isinstance(batcher_for(cluster), DirectCommands)
    await cluster.aclose()


async def test_concurrent_duplicates_are_applied_once_through_redis(servers, redis_url, js):
    """The dedupe on a server with REDIS_URL: copies of one eventId sent together (their claims
    in one batch) are applied once, and every copy gets the first one's ack."""
    server = servers(env={"REDIS_URL": redis_url})
    await js.connect("a", server.url + "/chat", transports=["websocket"])
    await js.connect("b", server.url + "/chat", transports=["websocket"])
    for name in ("a", "b"):
        assert (await js.emit(name, "join", {"room": "r"}))["ok"]
    acks = (await js.call("eval", code="""
        const s = ctx.sockets.get('a').socket;
        const copies = [];
        for (let i = 0; i < 10; i++) {
            copies.push(s.emitWithAck('message', {room: 'r', text: 'once', eventId: 'same'}));
            copies.push(s.emitWithAck('message', {room: 'r', text: 'other' + i, eventId: 'e' + i}));
        }
        return await Promise.all(copies);"""))["value"]
    once, others = acks[0::2], acks[1::2]
    assert once[0]["ok"] and all(a == once[0] for a in once)
    assert all(a["ok"] for a in others) and len({a["id"] for a in others} | {once[0]["id"]}) == 11
    await js.wait("b", "message", 11)
    await asyncio.sleep(0.3)
    texts = [e["args"][0]["text"] for e in await js.events("b", "message")]
    assert sorted(texts) == sorted(["once"] + [f"other{i}" for i in range(10)])


async def test_arguments_of_every_kind_reach_redis_intact(clients):
    """The batch's own RESP packing: bytes with CRLF and NUL, non-ASCII str, int, float,
    empty values, as redis-py's encoder would send them."""
    client, observer = clients
    batcher = batcher_for(client)
    values = {"bin": b"\x00a\r\nb", "text": "é€ \r\n", "int": -12, "float": 1.5, "empty": b""}
    assert await asyncio.gather(*(batcher.command("SET", k, v) for k, v in values.items())) == [True] * 5
    assert await observer.get("bin") == b"\x00a\r\nb"
    assert (await observer.get("text")).decode() == "é€ \r\n"
    assert await observer.get("int") == b"-12" and await observer.get("float") == b"1.5"
    assert await observer.get("empty") == b""
    # An argument redis-py refuses is its caller's error only, not its batch's.
    good = batcher.command("SET", "good", "1")
    with pytest.raises(DataError, match="Invalid input"):
        batcher.command("SET", "bad", None)
    assert await good is True
