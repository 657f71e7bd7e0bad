"""A node's held route (RealtimeManager.start, ChannelLog.subscribe_route) and the channels it
follows without a cursor until their first publication (RealtimeManager._unopened): the races a
review of the change found, each a test that failed before its fix (see also test_follow)."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from realtime_channels.envelope import channel_name
from realtime_channels.redis_channel_log import RedisChannelLog, route_name
from server.manager import RealtimeManager
from server.metrics import Metrics

from test_follow import until

PREFIX = "rv"
TAG = "nodeRV"


def make_manager(client, heard: list, paused: list | None = None) -> RealtimeManager:
    """A Redis-mode manager for route TAG (not started). With ``paused`` (a list), while
    ``paused`` holds the marker "hold" first, notifications are kept back there: a pub/sub
    reader lagging behind the command connection (a busy reader, a loaded node)."""
    def log_of(on_publication, on_resync):
        def hear(channel, publication):
            if paused is not None and paused and paused[0] == "hold":
                paused.append((on_publication, channel, publication))
                return
            heard.append((channel, publication.offset))
            on_publication(channel, publication)
        return RedisChannelLog(client, prefix=PREFIX, on_publication=hear, on_resync=on_resync)
    return RealtimeManager(log_of, ["/chat"], Metrics(), route=TAG)


async def test_route_held_while_its_last_early_channel_is_reaped_still_announces(redis_url):
    """Node start with the route not yet held (Redis slow, a loaded pace): a socket connects
    (its own room through _open_new, on the route's name) and leaves, and the reaper
    unsubscribes its channel while subscribe_route waits for the route's confirmation. The
    route must still be held afterwards: a later socket's own room is announced."""
    client, admin = aioredis.from_url(redis_url), aioredis.from_url(redis_url)
    heard: list = []
    manager = make_manager(client, heard)
    await manager.follow([channel_name("/chat", "room:a")])  # the pub/sub connection is up
    # The next SUBSCRIBE write waits (a busy node: a write went out just now, and the pace holds
    # the next one back).
    manager.log._subscriptions.write_pace = 0.5
    manager.log._subscriptions._last_write = asyncio.get_running_loop().time()
    early = channel_name("/chat", TAG + "e" * 20)
    assert manager._open_new(early)  # connected before the route was held
    manager.start()
    name = route_name(PREFIX, TAG).encode()
    await until(lambda: name in manager.log._subscriptions._waiters, "subscribe_route waiting")
    assert not manager._route_held
    await manager.reap()  # the early socket left: its channel (and room:a, no member) unsubscribed
    assert early not in manager.deliveries.cursors
    await until(lambda: manager._route_held, "route held")
    later = channel_name("/chat", TAG + "l" * 20)
    assert manager._hold(later)  # a socket connecting now: no cursor, no subscription of its own
    await asyncio.sleep(1.0)  # any SUBSCRIBE still paced is written by now
    publisher = RedisChannelLog(admin, prefix=PREFIX)
    await publisher.publish(later, b"dm")
    try:
        await until(lambda: later in manager.deliveries.cursors, "the later socket's DM heard")
        assert await admin.pubsub_numsub(name) == [(name, 1)]
    finally:
        await manager.stop()
        await client.aclose()
        await admin.aclose()


@pytest.mark.parametrize("followers", [1, 2])
async def test_followers_of_an_unopened_channel_keep_its_first_members_publication(redis_url, followers):
    """A new guest's user room waits in _unopened (tab 1 joined at its minting). A DM is
    published; its notification is still on its way (a lagging pub/sub reader) when other tabs
    join and follow() opens the channel. The DM must still reach tab 1: the cursor must open
    from the start, also when two followers in one loop turn share the queued open (the
    second once turned it into a position read, and the notification was then dropped as
    already delivered)."""
    client, admin = aioredis.from_url(redis_url), aioredis.from_url(redis_url)
    heard: list = []
    paused: list = []
    manager = make_manager(client, heard, paused)
    manager.start()
    await until(lambda: manager._route_held, "route held")
    delivered: list = []
    deliver = manager._deliver

    def recording(channel, cursor, publication):
        delivered.append((channel, publication.offset))
        deliver(channel, cursor, publication)
    manager._deliver = recording
    guest = channel_name("/chat", f"user:guest-{TAG}0123456789ab")
    assert manager._hold(guest)  # tab 1, the guest's first socket
    paused.append("hold")
    publisher = RedisChannelLog(admin, prefix=PREFIX)
    await publisher.publish(guest, b"dm to the guest")
    await until(lambda: len(paused) == 2, "notification arrived (held back)")
    # Tabs 2 (and 3) of the guest join in one loop turn.
    await asyncio.gather(*(manager.follow([guest]) for _ in range(followers)))
    assert manager.deliveries.cursors[guest].position == (0, "")  # from the start, no read
    paused.pop(0)
    for on_publication, channel, publication in paused[:]:
        on_publication(channel, publication)
    try:
        await until(lambda: (guest, 1) in delivered, "the DM delivered to tab 1", timeout=2.0)
    finally:
        await manager.stop()
        await client.aclose()
        await admin.aclose()


async def test_a_fresh_join_that_fails_leaves_nothing_in_unopened(redis_url):
    """on_connect's join of a new guest's user room for a socket dropped meanwhile (its
    transport closed during admit's follow of the namespace channel): add_to_room raises
    after _hold put the room in _unopened. Nothing ever removes it (no member will leave it,
    and the reaper walks cursors): before the change, _open_new's cursor was reaped."""
    client = aioredis.from_url(redis_url)
    manager = make_manager(client, [])
    manager.start()
    await until(lambda: manager._route_held, "route held")
    manager.add_to_room("other", "/chat", None, eio_sid="eio-other")  # the namespace has a socket
    guest_room = f"user:guest-{TAG}0123456789ab"
    with pytest.raises(KeyError):
        await manager.join("gone", "/chat", guest_room, fresh=True)
    await manager.reap()
    try:
        assert manager.unopened_count == 0, manager._unopened
    finally:
        await manager.stop()
        await client.aclose()
