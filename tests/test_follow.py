"""RealtimeManager.follow on the Redis channel log: the channels of one loop turn are opened
together (one SUBSCRIBE, one read of their positions), each caller returns with its channels
followed, and a publication right after is delivered from the right offset."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from realtime_channels.channel_log import EMPTY
from realtime_channels.envelope import channel_name
from realtime_channels.redis_channel_log import RedisChannelLog
from server.manager import RealtimeManager
from server.metrics import Metrics

PREFIX = "f"


def redis_manager(client: aioredis.Redis, heard: list) -> RealtimeManager:
    def log_of(on_publication, on_resync):
        def hear(channel, publication):
            heard.append((channel, publication.offset))
            on_publication(channel, publication)
        return RedisChannelLog(client, prefix=PREFIX, on_publication=hear, on_resync=on_resync)
    return RealtimeManager(log_of, ["/chat"], Metrics())


async def subscribes(client: aioredis.Redis) -> int:
    return (await client.info("commandstats")).get("cmdstat_subscribe", {}).get("calls", 0)


async def test_the_channels_of_one_turn_are_opened_together_from_their_positions(redis_url):
    client, admin = aioredis.from_url(redis_url), aioredis.from_url(redis_url)
    heard: list = []
    manager = redis_manager(client, heard)
    publisher = RedisChannelLog(admin, prefix=PREFIX)
    rooms = [channel_name("/chat", f"room:{i}") for i in range(10)]
    for i, room in enumerate(rooms[:5]):  # half exist, at offset i + 1
        for _ in range(i + 1):
            await publisher.publish(room, b"x")
    own = [channel_name("/chat", f"sid{i}") for i in range(10)]
    await manager.follow([rooms[0]])  # the pub/sub connection exists
    before = await subscribes(admin)

    async def follow(i: int) -> None:
        await manager.follow([rooms[i], own[i]], [own[i]])
        # On return, with no await between: both followed.
        assert rooms[i] in manager.deliveries.cursors and own[i] in manager.deliveries.cursors

    # Ten callers in one turn, and the same room asked for by several (one open, shared).
    await asyncio.gather(*(follow(i) for i in range(10)), manager.follow([rooms[3], rooms[7]]))
    assert await subscribes(admin) - before == 1
    assert manager._opening == {} and manager._queued_opens == {}
    cursors = manager.deliveries.cursors
    for i, room in enumerate(rooms):
        expected = (await publisher.position(room))
        assert (cursors[room].offset, cursors[room].epoch) == (expected.offset, expected.epoch), room
        assert (cursors[own[i]].offset, cursors[own[i]].epoch) == (EMPTY.offset, EMPTY.epoch)
    # Subscribed when follow returned: the next publication of each is heard.
    for room in rooms:
        await publisher.publish(room, b"y")
    deadline = asyncio.get_running_loop().time() + 10
    while len([h for h in heard if h[0] in rooms]) < len(rooms):
        assert asyncio.get_running_loop().time() < deadline, heard
        await asyncio.sleep(0.02)
    assert sorted(heard) == sorted((room, (i + 1 if i < 5 else 0) + 1) for i, room in enumerate(rooms))
    await manager.stop()
    await client.aclose()
    await admin.aclose()


async def test_a_channel_reaped_while_being_followed_again_is_followed_on_return(redis_url):
    client = aioredis.from_url(redis_url)
    manager = redis_manager(client, [])
    room = channel_name("/chat", "room:a")
    await manager.follow([room])
    # No member: a reaper pass closes it; a follow during the unsubscribe waits for it, then opens again.
    reaping = asyncio.ensure_future(manager.reap())
    await asyncio.sleep(0)
    assert room not in manager.deliveries.cursors and room in manager._closing
    await manager.follow([room])
    assert room in manager.deliveries.cursors
    assert await reaping == 1
    await manager.stop()
    await client.aclose()


async def test_an_open_that_fails_fails_each_caller_and_the_next_follow_opens_again(redis_url):
    client = aioredis.from_url(redis_url)
    manager = redis_manager(client, [])
    room = channel_name("/chat", "room:a")
    manager.log._subscriptions.subscribe_timeout = 0.0  # every subscribe times out
    results = await asyncio.gather(manager.follow([room]), manager.follow([room, channel_name("/chat", "b")]),
                                   return_exceptions=True)
    assert all(isinstance(r, TimeoutError) for r in results), results
    assert manager._opening == {} and room not in manager.deliveries.cursors
    manager.log._subscriptions.subscribe_timeout = 10.0
    await manager.follow([room])
    assert room in manager.deliveries.cursors
    await manager.stop()
    await client.aclose()
