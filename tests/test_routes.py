"""Node routes (realtime_channels.routes): the channels of one node's own sockets share one
notification name. The rule, the key layout it implies, and the channel log keeping the
contract over a route: each channel gets its own publications and nobody else's, one
subscription carries them all, and a route is unsubscribed with its last channel."""

from __future__ import annotations

import asyncio

import msgpack
import redis.asyncio as aioredis
import pytest
from redis.crc import key_slot

from realtime_channels.channel_log import ChannelBounds, Publication
from realtime_channels.redis_channel_log import (
    RedisChannelLog,
    channel_keys,
    decode_routed_notification,
    encode_notification,
    idempotency_key_name,
    notify_name,
)
from realtime_channels.routes import route_of

from test_channel_log import PREFIX, Collector, backend, eventually  # noqa: F401  (backend: the fixture)

TAG = "Ab3dE9"
SOCKET_A = f"/chat|{TAG}{'a' * 20}"
SOCKET_B = f"/chat|{TAG}-_{'b' * 18}"
SOCKET_UNFOLLOWED = f"/chat|{TAG}{'c' * 20}"
GUEST = f"/chat|user:guest-{TAG}0123456789ab"
ROUTE = f"{PREFIX}:{{@{TAG}}}:route"
ROUTE_NAME = ROUTE.encode()


def test_socket_rooms_and_minted_guests_rooms_route_to_the_tag_they_start_with():
    assert route_of(SOCKET_A) == TAG
    assert route_of(SOCKET_B) == TAG
    assert route_of(GUEST) == TAG
    assert route_of("/game|zz9ZZ9" + "x" * 20) == "zz9ZZ9"
    for plain in ("/chat", "/chat|room:lobby", "/chat|user:alice", f"/chat|{TAG}{'a' * 19}",
                  f"/chat|{TAG}{'a' * 21}", f"/chat|{TAG[:5]}-{'a' * 20}", f"/chat|{TAG}{'a' * 19}!",
                  "/chat|user:guest-0123456789ab",  # minted without a tag (older ids): its own channel
                  f"/chat|user:guest-{TAG}0123456789AB", f"/chat|user:guest-{TAG}0123456789a",
                  f"/chat|user:{TAG}{'a' * 20}", f"{TAG}{'a' * 20}", "room"):
        assert route_of(plain) is None, plain


def test_a_routed_channels_keys_and_its_routes_name_are_in_one_slot_and_others_keep_theirs():
    slots = set()
    for channel in (SOCKET_A, SOCKET_B, GUEST):
        keys = channel_keys(PREFIX, channel)
        assert keys.notify == notify_name(PREFIX, channel) == ROUTE
        names = [keys.stream, keys.meta, keys.notify, idempotency_key_name(PREFIX, channel, "k")]
        slots |= {key_slot(n.encode()) for n in names}
        assert len({keys.stream, keys.meta}) == 2 and channel in keys.stream  # each channel's own keys
    assert slots == {key_slot(ROUTE.encode())}
    assert channel_keys(PREFIX, SOCKET_A).stream != channel_keys(PREFIX, SOCKET_B).stream
    plain = channel_keys(PREFIX, "/chat|room:lobby")
    assert plain.notify == f"{PREFIX}:{{/chat|room:lobby}}:pub"
    assert plain.stream == f"{PREFIX}:{{/chat|room:lobby}}:stream"


def test_a_routed_notification_names_its_channel_and_garbage_is_refused():
    publication = Publication(3, b"data", 17, "0123456789abcdef")
    assert decode_routed_notification(encode_notification(publication, SOCKET_A), 1 << 20) == (SOCKET_A, publication)
    for garbage in (encode_notification(publication),  # no channel
                    encode_notification(publication, SOCKET_A) + b"x",
                    msgpack.packb([1, 3, b"0123456789abcdef", 17, b"data", 5], use_bin_type=False),
                    msgpack.packb([1, 3, b"0123456789abcdef", 17, b"data", b"a{b"], use_bin_type=False),
                    msgpack.packb([1, 3, b"0123456789abcdef", 17, b"data", b"\xff\xfe"], use_bin_type=False),
                    msgpack.packb([1, 3, b"0123456789abcdef", 17, b"data", b""], use_bin_type=False),
                    msgpack.packb([1, 3, b"0123456789abcdef", 17, b"data", b"x" * 300], use_bin_type=False)):
        with pytest.raises(ValueError):
            decode_routed_notification(garbage, 1 << 20)


async def subscribed_names(backend, log) -> set[bytes]:
    """The names the log's node is subscribed to, as Redis counts them (plain Redis: PUBSUB
    CHANNELS), else as its subscriptions hold them."""
    if backend.kind == "redis":
        return set(await backend.clients[0].pubsub_channels(f"{PREFIX}:*"))
    return log._subscriptions.names


async def test_channels_of_one_route_share_one_subscription_each_getting_only_its_own(backend):
    subscriber = Collector()
    node = backend.make(subscriber=subscriber)
    publisher = backend.make()
    await node.subscribe([SOCKET_A, "/chat|room:lobby"])
    await node.subscribe([SOCKET_B])
    assert node.subscribe_new([GUEST]) is True
    written = node.subscriptions_written()
    if written is not None:
        await written
    for round_ in range(2):
        for channel in (SOCKET_A, SOCKET_UNFOLLOWED, SOCKET_B, GUEST, "/chat|room:lobby"):
            await publisher.publish(channel, f"{channel} {round_}".encode())
    await eventually(lambda: subscriber.offsets("/chat|room:lobby") == [1, 2], what="the barrier")
    await eventually(lambda: subscriber.offsets(SOCKET_A) == [1, 2] and subscriber.offsets(SOCKET_B) == [1, 2]
                     and subscriber.offsets(GUEST) == [1, 2], what="each followed channel's two")
    assert subscriber.offsets(SOCKET_UNFOLLOWED) == []
    assert all(p.data.startswith(c.encode() + b" ") for c, p in subscriber.publications)
    assert subscriber.resyncs == []
    if backend.kind != "memory":
        assert await subscribed_names(backend, node) == {ROUTE.encode(), b"t:{/chat|room:lobby}:pub"}

    # One channel of the route left: the others still get theirs, it does not.
    await node.unsubscribe([SOCKET_A])
    await publisher.publish(SOCKET_A, b"after")
    await publisher.publish(SOCKET_B, b"after")
    await eventually(lambda: subscriber.offsets(SOCKET_B) == [1, 2, 3], what="B's third")
    assert subscriber.offsets(SOCKET_A) == [1, 2]
    if backend.kind != "memory":
        assert ROUTE.encode() in await subscribed_names(backend, node)
        # The last of the route's channels gone: the route is unsubscribed.
        await node.unsubscribe([SOCKET_B, GUEST])
        await eventually(lambda: _lacks(backend, node, ROUTE.encode()), what="the route unsubscribed")
        # Followed again: subscribed again, and notified.
        await node.subscribe([SOCKET_A])
        await publisher.publish(SOCKET_A, b"again")
        await eventually(lambda: subscriber.offsets(SOCKET_A) == [1, 2, 4], what="A's fourth")


async def _lacks(backend, log, name: bytes) -> bool:
    return name not in await subscribed_names(backend, log)


async def test_subscribe_waits_for_a_route_that_subscribe_new_has_not_had_confirmed(redis_url):
    """A recovering socket's channel on the route a new socket's subscribe_new has just asked
    for: subscribe() returns only once Redis confirmed the route, so a position read after it
    misses nothing."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url)
    log = RedisChannelLog(client, prefix=PREFIX)
    try:
        await log.subscribe(["/chat|room:warm"])  # the pub/sub connection is up
        assert log.subscribe_new([SOCKET_A]) is True
        assert not log.confirmed(SOCKET_A)
        await log.subscribe([SOCKET_B])
        assert log.confirmed(SOCKET_B) and log.confirmed(SOCKET_A)
    finally:
        await log.close()
        await client.aclose()


async def test_garbage_on_a_route_is_dropped_and_its_channels_still_notified(redis_url, caplog):
    import logging

    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url)
    subscriber = Collector()
    log = RedisChannelLog(client, prefix=PREFIX, on_publication=subscriber.on_publication)
    try:
        await log.subscribe([SOCKET_A])
        good = Publication(1, b"d", 1, "0123456789abcdef")
        with caplog.at_level(logging.WARNING, logger="realtime_channels.redis_channel_log"):
            for payload in (b"junk", encode_notification(good),  # without its channel
                            encode_notification(good, "/chat|room:x"),  # a channel not followed
                            msgpack.packb([1, 1, b"0123456789abcdef", 1, b"d", 7], use_bin_type=False)):
                await client.publish(ROUTE, payload)
            await log.publish(SOCKET_A, b"real")
            await eventually(lambda: subscriber.publications != [], what="the real notification")
        assert [(c, p.data) for c, p in subscriber.publications] == [(SOCKET_A, b"real")]
        assert "malformed notification" in caplog.text
    finally:
        await log.close()
        await client.aclose()


async def test_a_route_a_subscribe_still_waits_for_is_not_confirmed_for_a_new_channel_on_it(redis_url):
    """A recovering socket (or a returning guest, or a cluster's first connect) subscribe()s the
    route; a new socket's own room then goes through subscribe_new on the same route (nothing
    to send). Redis has not confirmed the route: confirmed() says so, so the manager reads back
    what it publishes there meanwhile; and the confirmation the other caller waited for signals
    a resync for the route's other channels. (Found by review: both were missing.)"""
    client, other = aioredis.from_url(redis_url), aioredis.from_url(redis_url)
    sub = Collector()
    log = RedisChannelLog(client, prefix=PREFIX, on_publication=sub.on_publication,
                          on_resync=sub.on_resync, subscribe_pace=0.3)
    publisher = RedisChannelLog(other, prefix=PREFIX)
    try:
        await log.subscribe(["/chat|room:warm"])  # link up
        await log.subscribe(["/chat|room:warm2"])  # a write on it: the next waits for the pace
        following = asyncio.create_task(log.subscribe([SOCKET_A]))
        await asyncio.sleep(0.01)
        assert ROUTE_NAME in log._subscriptions._waiters  # asked for, not confirmed
        assert log.subscribe_new([SOCKET_B]) is True
        confirmed = log.confirmed(SOCKET_B)
        # what RealtimeManager.publish does for B's channel when confirmed() is True: no read-back
        await publisher.publish(SOCKET_B, b"welcome")
        await following
        await asyncio.sleep(0.3)
        # Both halves of the fix: not reported confirmed (so the manager reads its publication
        # back), and the route's confirmation signals a resync for B, not for A (whose caller
        # reads it), so a notification sent before the SUBSCRIBE is read from the history.
        assert not confirmed, "confirmed() said yes before Redis confirmed the route"
        assert SOCKET_B in sub.resyncs and SOCKET_A not in sub.resyncs, (sub.publications, sub.resyncs)
    finally:
        await log.close()
        await publisher.close()
        await client.aclose()
        await other.aclose()


async def test_resubscribing_a_route_while_its_sunsubscribe_reply_is_unread_drops_the_connection(redis_url):
    """Sharded pub/sub: the reaper unsubscribes a route's last channel while another channel of
    the same route is followed (the manager's per-channel _closing guard does not see it). The
    SUNSUBSCRIBE reply for a name wanted again is ours, not a slot moving: the connection stays
    and nothing is resynced. (Found by review: the connection was replaced.)"""
    client = aioredis.from_url(redis_url)
    sub = Collector()
    log = RedisChannelLog(client, prefix=PREFIX, sharded=True, on_publication=sub.on_publication,
                          on_resync=sub.on_resync)
    try:
        await log.subscribe(["/chat|room:lobby", SOCKET_A])
        conn = log._subscriptions._links[""].conn
        reaping = asyncio.create_task(log.unsubscribe([SOCKET_A]))  # the last of its route
        await asyncio.sleep(0)
        await log.subscribe([SOCKET_B])  # a recovered socket of the same route
        await reaping
        await asyncio.sleep(0.5)
        replaced = log._subscriptions._links[""].conn is not conn
        assert not replaced and sub.resyncs == [], (replaced, sub.resyncs)
    finally:
        await log.close()
        await client.aclose()


async def test_trim_expired_reaches_routed_streams(redis_url):
    """The age sweep reaches routed streams (<prefix>:{@tag}:<channel>:stream) as well as the
    others. (Found by review: its SCAN pattern wanted '}:stream' at the end.)"""
    client = aioredis.from_url(redis_url)
    log = RedisChannelLog(client, prefix=PREFIX, bounds=ChannelBounds(max_length=100, max_age=0.2))
    try:
        for channel in ("/chat|room:lobby", SOCKET_A):
            await log.publish(channel, b"old")
        await asyncio.sleep(0.15)
        for channel in ("/chat|room:lobby", SOCKET_A):
            await log.publish(channel, b"newer")  # keeps the keys alive
        await asyncio.sleep(0.1)  # "old" is now past max_age; "newer" is not
        await log.trim_expired()
        assert await client.xlen(channel_keys(PREFIX, "/chat|room:lobby").stream) == 1
        assert await client.xlen(channel_keys(PREFIX, SOCKET_A).stream) == 1
    finally:
        await log.close()
        await client.aclose()
