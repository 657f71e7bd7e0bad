"""RealtimeManager.follow on the Redis channel log: the channels of one loop turn are opened
together (one SUBSCRIBE, one read of their positions), each caller returns with its channels
followed, and a publication right after is delivered from the right offset."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from realtime_channels.channel_log import EMPTY
from realtime_channels.envelope import channel_name
from realtime_channels.redis_channel_log import RedisChannelLog, channel_keys
from server.manager import RealtimeManager
from server.metrics import Metrics

from harness import kill_and_publish, monitored

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
    # Redis did subscribe them (only the wait timed out): the failed open unsubscribes what
    # it asked for, since nothing else would (the reaper walks cursors).
    names = [channel_keys(PREFIX, c).notify for c in (room, channel_name("/chat", "b"))]
    assert manager._closing, "no unsubscribe under way after the failed open"
    await asyncio.gather(*set(manager._closing.values()))
    assert [n for _, n in await client.pubsub_numsub(*names)] == [0, 0]
    manager.log._subscriptions.subscribe_timeout = 10.0
    await manager.follow([room])
    assert room in manager.deliveries.cursors
    await manager.stop()
    await client.aclose()


TAG = "nodeAA"


async def until(condition, what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.02)


async def held_manager(client: aioredis.Redis, heard: list) -> RealtimeManager:
    def log_of(on_publication, on_resync):
        def hear(channel, publication):
            heard.append((channel, publication.offset))
            on_publication(channel, publication)
        return RedisChannelLog(client, prefix=PREFIX, on_publication=hear, on_resync=on_resync)
    manager = RealtimeManager(log_of, ["/chat"], Metrics(), route=TAG)
    manager.start()
    await until(lambda: manager._route_held, "the node's route held")
    return manager


async def test_a_held_routes_channel_gets_its_cursor_at_its_first_publication(redis_url):
    """With its route held, a node follows a new socket's own room without a subscription
    and without a cursor (most never carry a publication): the first publication opens it
    from the start. A channel of another route, or a plain one, is not held."""
    client, admin = aioredis.from_url(redis_url), aioredis.from_url(redis_url)
    heard: list = []
    manager = await held_manager(client, heard)
    publisher = RedisChannelLog(admin, prefix=PREFIX)
    own = channel_name("/chat", TAG + "s" * 20)
    before = await subscribes(admin)
    assert manager._hold(own) and manager.unopened_count == 1 and own not in manager.deliveries.cursors
    assert not manager._hold(channel_name("/chat", "nodeBB" + "s" * 20))
    assert not manager._hold(channel_name("/chat", "room:a")) and manager.unopened_count == 1
    await publisher.publish(own, b"x")
    await publisher.publish(own, b"y")
    await until(lambda: own in manager.deliveries.cursors and manager.deliveries.cursors[own].offset == 2,
                "the cursor opened by the first publication, at the second")
    cursor = manager.deliveries.cursors[own]
    assert cursor.epoch == (await publisher.position(own)).epoch and manager.unopened_count == 0
    assert heard == [(own, 1), (own, 2)] and await subscribes(admin) == before
    await manager.stop()
    await client.aclose()
    await admin.aclose()


async def test_a_held_routes_missed_notifications_are_read_for_its_unopened_channels_too(redis_url):
    """Notifications missed while the pub/sub connection was down: after it is back, every
    channel of the route with a cursor here is read, and the unopened ones that have a
    publication from the start; an unopened channel nothing was published to stays unopened,
    its position read (in one batch with the others'), its history not."""
    client, admin = aioredis.from_url(redis_url), aioredis.from_url(redis_url)
    heard: list = []
    manager = await held_manager(client, heard)
    opened, unopened, quiet = (channel_name("/chat", TAG + c * 20) for c in "ouq")
    assert manager._hold(opened) and manager._hold(unopened) and manager._hold(quiet)
    publisher = RedisChannelLog(admin, prefix=PREFIX)
    await publisher.publish(opened, b"1")
    await until(lambda: opened in manager.deliveries.cursors, "the first publication's cursor")
    # Killed and published in one transaction: the node certainly misses these notifications.
    cursors = manager.deliveries.cursors
    async with monitored(redis_url) as seen:
        await kill_and_publish(admin, PREFIX, publisher.bounds, [(opened, b"2"), (unopened, b"1"), (unopened, b"2")])
        await until(lambda: cursors.get(opened) is not None and cursors[opened].offset == 2
                    and cursors.get(unopened) is not None and cursors[unopened].offset == 2
                    and manager._probing is None, "both read after the resync")
    assert heard == [(opened, 1)] and manager.unopened_count == 1 and quiet not in cursors
    assert cursors[unopened].epoch == (await publisher.position(unopened)).epoch
    quiet_keys = channel_keys(PREFIX, quiet)
    commands = [(i["command"], i["client_address"]) for i in seen]
    assert [c for c, who in commands if c.startswith("HMGET ") and quiet_keys.meta in c and who != "lua"], \
        "the quiet channel's position was not read"
    assert not [c for c, _ in commands if quiet_keys.stream in c], "the quiet channel's history was read"
    # Its first publication still opens it, from the start.
    await publisher.publish(quiet, b"1")
    await until(lambda: quiet in cursors and cursors[quiet].offset == 1, "the quiet channel opened by its first publication")
    assert manager.unopened_count == 0
    await manager.stop()
    await client.aclose()
    await admin.aclose()


async def test_a_channel_followed_while_its_position_is_read_after_a_resync_is_still_read(redis_url):
    """A second tab's follow() opens an unopened channel (from the start, without a read) while
    the resync's read of positions is under way: the publication whose notification was lost
    is still read and delivered once the positions come, not left behind its cursor."""
    client, admin = aioredis.from_url(redis_url), aioredis.from_url(redis_url)
    heard: list = []
    manager = await held_manager(client, heard)
    guest = channel_name("/chat", f"user:guest-{TAG}0123456789cd")
    assert manager._hold(guest)
    publisher = RedisChannelLog(admin, prefix=PREFIX)
    read_positions, go_on = asyncio.Event(), asyncio.Event()
    positions = manager.log.positions

    async def held_back(channels):
        read_positions.set()
        await go_on.wait()
        return await positions(channels)

    manager.log.positions = held_back
    await kill_and_publish(admin, PREFIX, publisher.bounds, [(guest, b"lost")])
    await asyncio.wait_for(read_positions.wait(), 10)
    await manager.follow([guest])  # the second tab: the cursor opens at the start
    cursors = manager.deliveries.cursors
    assert cursors[guest].offset == 0 and manager.unopened_count == 0
    go_on.set()
    await until(lambda: cursors[guest].offset == 1, "the lost publication read after the positions came")
    assert heard == [] and manager._probing is None
    await manager.stop()
    await client.aclose()
    await admin.aclose()


async def lose_a_publication(manager: RealtimeManager, publisher: RedisChannelLog, channel: str) -> None:
    """Publish to ``channel`` while this node's notifications of it are dropped (lost)."""
    dropped = asyncio.Event()
    hear = manager.log.on_publication

    def drop(name, publication):
        if name == channel:
            dropped.set()
        else:
            hear(name, publication)

    manager.log.on_publication = drop
    await publisher.publish(channel, b"lost")
    await asyncio.wait_for(dropped.wait(), 10)
    manager.log.on_publication = hear


async def test_a_follow_that_opens_a_channel_before_the_probe_starts_still_gets_it_read(redis_url):
    """(From a review.) A follow() whose open completes in the loop turn after the resync,
    before the probe's first step, opens the channel at the start without a read: the probe
    must still read it, since the resync took the unopened channels down when it came."""
    client, admin = aioredis.from_url(redis_url), aioredis.from_url(redis_url)
    manager = await held_manager(client, [])
    guest = channel_name("/chat", f"user:guest-{TAG}0123456789ef")
    assert manager._hold(guest)
    await lose_a_publication(manager, RedisChannelLog(admin, prefix=PREFIX), guest)
    following = asyncio.ensure_future(manager.follow([guest]))  # a second tab
    await asyncio.sleep(0)  # follow() has queued its open (a task whose first step does it all)
    manager._on_route_resync()  # the route's resubscription is confirmed in this same turn
    await following
    cursors = manager.deliveries.cursors
    await until(lambda: cursors[guest].offset == 1, "the lost publication read")
    await manager.stop()
    await client.aclose()
    await admin.aclose()


async def test_a_failed_position_read_still_reads_what_a_later_resync_asked_for(redis_url, monkeypatch):
    """(From a review.) Resync 1: the first batch's channel is quiet and stays unopened. A
    second loss (of its publication's notification) and resync 2 come while the second batch
    is read, and that read fails: the channel resync 2 asked for is opened and read too."""
    import server.manager as manager_module

    monkeypatch.setattr(manager_module, "PROBE_BATCH", 1)
    client, admin = aioredis.from_url(redis_url), aioredis.from_url(redis_url)
    manager = await held_manager(client, [])
    for c in "ab":
        assert manager._hold(channel_name("/chat", TAG + c * 20))
    publisher = RedisChannelLog(admin, prefix=PREFIX)
    real_positions = manager.log.positions
    second_read, fail = asyncio.Event(), asyncio.Event()
    order: list = []

    async def positions(channels):
        order.append(list(channels))
        if len(order) == 2:
            second_read.set()
            await fail.wait()
            raise ConnectionError("Redis went away again")
        return await real_positions(channels)

    manager.log.positions = positions
    manager._on_route_resync()
    await asyncio.wait_for(second_read.wait(), 10)
    first = order[0][0]
    assert first in manager._unopened  # quiet at the first read: left unopened
    await lose_a_publication(manager, publisher, first)
    manager._on_route_resync()  # resync 2, while the second batch is read
    fail.set()
    await until(lambda: manager._probing is None, "the probe ended")
    manager.log.positions = real_positions
    cursors = manager.deliveries.cursors
    await until(lambda: first in cursors and cursors[first].offset == 1, "the first channel's lost publication read")
    await manager.stop()
    await client.aclose()
    await admin.aclose()


async def test_following_an_unopened_channel_opens_it_from_the_start_without_a_read(redis_url):
    """A second member that needs the cursor of an unopened channel (another tab of a new
    guest) opens it from the start: its first members hold it from there, and a publication
    whose notification is still on its way is delivered, not skipped by a position read."""
    client, admin = aioredis.from_url(redis_url), aioredis.from_url(redis_url)
    manager = await held_manager(client, [])
    publisher = RedisChannelLog(admin, prefix=PREFIX)
    guest = channel_name("/chat", f"user:guest-{TAG}0123456789ab")
    assert manager._hold(guest)
    async with monitored(redis_url) as seen:
        await asyncio.gather(publisher.publish(guest, b"on its way"), manager.follow([guest]))
    assert (manager.deliveries.cursors[guest].offset, manager.unopened_count) in ((0, 0), (1, 0))
    meta = channel_keys(PREFIX, guest).meta
    # (The publish script's own HMGET of the meta, from "lua", is not a position read.)
    reads = [i["command"] for i in seen if i["command"].startswith("HMGET ") and i["client_address"] != "lua"]
    assert not [c for c in reads if meta in c], reads
    await until(lambda: manager.deliveries.cursors[guest].offset == 1, "the publication delivered")
    await manager.stop()
    await client.aclose()
    await admin.aclose()
