"""server.core.positions and server.core.envelope: the recovery bookkeeping, without I/O."""

from __future__ import annotations

from typing import Any, Callable

from realtime_channels.envelope import (Envelope, channel_name, channel_tag, decode_envelope, encode_envelope,
                                  offset_token, parse_offset_token, split_channel)
from server.core.positions import NOWHERE, Deliveries, SocketPositions, resolve

ROOM, OTHER, OWN = "/chat|room:a", "/chat|room:b", "/chat|sid1"


def token(channel: str, offset: int) -> str:
    return offset_token(channel_tag(channel), offset)


def node_with(*channels: str) -> Deliveries:
    node = Deliveries(trail_length=8)
    for channel in channels:
        node.open(channel, 0, "e")
    return node


def member_of(node: Deliveries, *channels: str) -> SocketPositions:
    """A socket that joined ``channels`` on ``node`` now."""
    socket = SocketPositions()
    for channel in channels:
        node.join(socket, channel)
    return socket


def deliver(node: Deliveries, channel: str, offset: int) -> None:
    node.delivered(node.cursors[channel], offset)


def test_channel_names_and_envelopes_round_trip():
    assert split_channel(channel_name("/chat", "room:a")) == ("/chat", "room:a")
    assert split_channel(channel_name("/chat", None)) == ("/chat", None)
    envelope = Envelope("message", [{"text": "hi"}, 2], ("s1",), ("room:a", "room:b"), "seq")
    assert decode_envelope(encode_envelope(envelope)) == envelope
    assert decode_envelope(b"\xc1") is None  # not msgpack
    assert decode_envelope(encode_envelope(Envelope("e", [])).replace(b"\xa1e", b"\xa1z")) is None


def test_offset_strings_are_strict():
    assert parse_offset_token(token(ROOM, 17)) == (17, channel_tag(ROOM))
    for bad in (None, 17, "17", "17~", "x~abcdef01", "1²~abcdef01", "17~ABCDEF01", "1" * 16 + "~abcdef01"):
        assert parse_offset_token(bad) is None, bad


def test_the_clients_token_moves_every_channel_to_where_it_was_then():
    node = node_with(ROOM, OTHER)
    socket = member_of(node, ROOM, OTHER)
    deliver(node, ROOM, 1)
    deliver(node, OTHER, 1)
    deliver(node, ROOM, 2)   # the client's last received
    deliver(node, OTHER, 2)  # sent, lost in the cut
    deliver(node, ROOM, 3)   # sent, lost in the cut
    trail = node.trail_of(socket, 100)
    assert trail == [(ROOM, 1), (OTHER, 1), (ROOM, 2), (OTHER, 2), (ROOM, 3)]
    vector = resolve(socket.origin, trail, token(ROOM, 2))
    assert vector == {ROOM: (2, "e"), OTHER: (1, "e")}


def test_no_token_means_the_origin_and_an_unknown_token_only_moves_its_channel():
    node = node_with(ROOM, OTHER)
    socket = member_of(node, ROOM, OTHER)
    deliver(node, ROOM, 1)
    deliver(node, OTHER, 1)
    trail = node.trail_of(socket, 100)
    assert resolve(socket.origin, trail, None) == {ROOM: (0, "e"), OTHER: (0, "e")}
    # a token not in the trail (a session saved without it): its channel moves, nothing else
    assert resolve(socket.origin, [], token(OTHER, 1)) == {ROOM: (0, "e"), OTHER: (1, "e")}
    # a token of a channel the session is not in changes nothing
    assert resolve(socket.origin, trail, token(OWN, 5)) == {ROOM: (0, "e"), OTHER: (0, "e")}


def test_a_trail_cut_by_its_bound_errs_towards_duplicates():
    node = node_with(ROOM, OTHER)
    socket = member_of(node, ROOM, OTHER)
    deliver(node, OTHER, 1)
    for offset in range(1, 12):  # more than trail_length: the first entries are forgotten
        deliver(node, ROOM, offset)
    trail = node.trail_of(socket, 100)
    assert (OTHER, 1) in trail and (ROOM, 1) not in trail
    vector = resolve(socket.origin, trail, token(ROOM, 11))
    assert vector[ROOM] == (11, "e") and vector[OTHER] == (1, "e")
    # the session bound keeps the newest entries: OTHER's is lost, so it is replayed again
    short = node.trail_of(socket, 3)
    assert resolve(socket.origin, short, token(ROOM, 11)) == {ROOM: (11, "e"), OTHER: (0, "e")}


def test_an_answered_ping_folds_what_was_delivered_before_it_into_the_origin():
    node = node_with(ROOM, OTHER)
    socket = member_of(node, ROOM, OTHER)
    deliver(node, ROOM, 1)
    deliver(node, OTHER, 1)
    node.ping(socket)
    deliver(node, ROOM, 2)  # after the ping: not proven received
    node.pong(socket)
    assert socket.origin == {ROOM: (1, "e"), OTHER: (1, "e")}
    assert node.trail_of(socket, 100) == [(ROOM, 2)]
    # a pong without a ping changes nothing
    node.pong(socket)
    assert socket.origin == {ROOM: (1, "e"), OTHER: (1, "e")}


def test_a_channel_joined_before_it_existed_starts_at_its_first_epoch():
    node = Deliveries(trail_length=8)
    node.open(ROOM, 0, "")
    socket = SocketPositions()
    node.join(socket, ROOM)
    assert socket.origin[ROOM] == NOWHERE
    cursor = node.cursors[ROOM]
    node.reset(cursor, "new")
    node.delivered(cursor, 1)
    node.align(socket)
    assert socket.origin[ROOM] == (0, "new")
    assert resolve(socket.origin, node.trail_of(socket, 10), token(ROOM, 1)) == {ROOM: (1, "new")}


def test_replayed_publications_come_first_in_the_trail():
    node = node_with(ROOM)
    socket = SocketPositions(base_seq=node.seq)
    node.join(socket, ROOM)
    socket.replayed = [(ROOM, 4), (ROOM, 5)]
    deliver(node, ROOM, 6)
    assert node.trail_of(socket, 10) == [(ROOM, 4), (ROOM, 5), (ROOM, 6)]
    assert resolve({ROOM: (3, "e")}, node.trail_of(socket, 10), token(ROOM, 5)) == {ROOM: (5, "e")}


def test_a_reused_offset_is_told_from_a_repeated_notification_by_its_time():
    node = node_with(ROOM)
    cursor = node.cursors[ROOM]
    for offset in (1, 2, 3):
        node.delivered(cursor, offset, 1000 + offset)
    assert not node.reused(cursor, 3, 1003)  # the same publication heard twice
    assert node.reused(cursor, 3, 2000)      # another publication given offset 3 after a failover
    assert not node.reused(cursor, 9, 2000)  # nothing known about it
    node.rewind(cursor, 3)
    assert cursor.offset == 2 and [o for o, _ in cursor.recent] == [1, 2]
    node.delivered(cursor, 3, 2000)
    assert not node.reused(cursor, 3, 2000)


def memory_manager(deaf: Callable[[], bool] = lambda: False) -> Any:
    """A RealtimeManager of /chat on the memory channel log (imported here, as the tests above
    need only server.core); its notifications are dropped while ``deaf()`` is true, as while a
    failover's broken subscription is being renewed."""
    from realtime_channels.channel_log import MemoryChannelLog
    from server.manager import RealtimeManager
    from server.metrics import Metrics

    def log_of(on_publication, on_resync):
        return MemoryChannelLog(on_publication=lambda c, p: None if deaf() else on_publication(c, p),
                                on_resync=on_resync)

    return RealtimeManager(log_of, ["/chat"], Metrics())


async def test_a_node_delivers_again_from_an_offset_a_failover_gave_to_a_new_publication():
    import asyncio

    from realtime_channels.channel_log import Publication

    manager = memory_manager()
    cursor = await manager.open_channel(ROOM)
    for i in range(3):
        await manager.publish("/chat", "room:a", "message", [{"n": i}])
    await asyncio.sleep(0.05)
    assert cursor.offset == 3 and manager.deliveries.seq == 3
    first = cursor.recent[-1]
    # the same notification again: nothing happens
    manager._on_publication(ROOM, Publication(3, b"", first[1], cursor.epoch))
    await asyncio.sleep(0.05)
    assert manager.deliveries.seq == 3
    # offset 3 again, published at another time: what the node had at 3 is gone; it reads 3 again
    manager._on_publication(ROOM, Publication(3, b"", first[1] + 5000, cursor.epoch))
    await asyncio.sleep(0.05)
    assert cursor.offset == 3 and manager.deliveries.seq == 4
    await manager.stop()


def test_an_epoch_continued_after_a_lossy_failover_delivers_again_from_its_base():
    node = node_with(ROOM)
    cursor = node.cursors[ROOM]
    for offset in range(1, 9):
        node.delivered(cursor, offset, 1000 + offset)
    socket = member_of(node, ROOM)
    node.ping(socket)  # before the switch: answered, it proves nothing about the new epoch
    node.continue_epoch(cursor, "f", 6)  # 6.. of "e" were lost
    assert cursor.position == (5, "f") and cursor.previous_epoch == "e"
    # What the node delivered before the switch is told apart by time: 6 was lost (another
    # publication has it now), 7 was delivered already as the new epoch's.
    assert node.seen(cursor, 7, 1007) and not node.seen(cursor, 6, 2006) and not node.seen(cursor, 9, 1009)
    node.pong(socket)
    assert socket.origin == {ROOM: (8, "e")}
    node.ping(socket)
    node.delivered(cursor, 6, 2006)
    node.pong(socket)  # after the switch: the client stands in the new epoch, at the switch
    assert socket.origin == {ROOM: (5, "f")}
    # A later plain new epoch (the channel expired) continues nothing.
    node.reset(cursor, "g")
    assert cursor.previous_epoch == "" and not node.seen(cursor, 7, 1007) and not cursor.recent


def test_a_socket_of_the_old_epoch_that_had_a_lost_publication_resolves_to_the_old_epoch():
    """Its saved position stays in the old epoch, where the channel log says whether it can go
    on (below the base) or not: never moved into the new epoch past a publication it lacks."""
    node = node_with(ROOM)
    cursor = node.cursors[ROOM]
    socket = member_of(node, ROOM)
    for offset in range(1, 9):
        node.delivered(cursor, offset, 1000 + offset)
    node.continue_epoch(cursor, "f", 6)
    node.align(socket)
    # The new epoch's trail does not count for a socket of the old one.
    assert node.trail_of(socket, 10) == []
    assert resolve(socket.origin, node.trail_of(socket, 10), token(ROOM, 8)) == {ROOM: (8, "e")}


async def test_a_node_moves_into_a_renewed_epoch_delivering_only_what_it_had_not():
    import asyncio

    manager = memory_manager()
    cursor = await manager.open_channel(ROOM)
    for i in range(6):
        await manager.publish("/chat", "room:a", "message", [{"n": i}])
    await asyncio.sleep(0.05)
    old, times = cursor.epoch, dict(cursor.recent)
    assert cursor.offset == 6 and manager.deliveries.seq == 6
    # As after a failover: this node had delivered other publications at 5 and 6 (lost since);
    # another node reports them and the epoch is renewed, continuing the old one below 5.
    cursor.recent.pop()
    cursor.recent.pop()
    cursor.recent.extend([(5, times[5] - 7), (6, times[6] - 7)])
    renewed = await manager.log.renew_epoch(ROOM, old, [(4, times[4]), (5, times[5] - 7), (6, times[6] - 7)])
    assert renewed.epoch != old
    await manager.publish("/chat", "room:a", "message", [{"n": 6}])
    await asyncio.sleep(0.05)
    # The next notification is of the new epoch: the node moves into it at offset 4 and
    # delivers 5 and 6 (other publications than it had) and 7.
    assert cursor.position == (7, renewed.epoch) and cursor.previous_epoch == old
    assert [o for o, _ in cursor.recent][-3:] == [5, 6, 7] and manager.deliveries.seq == 6 + 1 + 3
    # A node that delivered 5 and 6 as they are now (after a rewind, say) sends only 7.
    other = await manager.open_channel(OTHER)
    for i in range(6):
        await manager.publish("/chat", "room:b", "message", [{"n": i}])
    await asyncio.sleep(0.05)
    old, times, seq = other.epoch, dict(other.recent), manager.deliveries.seq
    renewed = await manager.log.renew_epoch(OTHER, old, [(4, times[4]), (5, times[5] - 7), (6, times[6] - 7)])
    await manager.publish("/chat", "room:b", "message", [{"n": 6}])
    await asyncio.sleep(0.05)
    assert other.position == (7, renewed.epoch) and manager.deliveries.seq == seq + 1 + 1
    await manager.stop()


def test_a_cursor_allocates_its_deques_at_the_first_delivery_only():
    # Every socket has a channel of its own (OWN) that mostly never carries a publication:
    # its cursor must not hold two empty 64-slot deques (1.5 KiB per idle connection).
    from collections import deque

    node = node_with(OWN)
    cursor = node.cursors[OWN]
    assert not isinstance(cursor.trail, deque) and not isinstance(cursor.recent, deque)
    assert cursor.last_at(5) is None and not node.reused(cursor, 1, 0)
    assert node.trail_of(member_of(node, OWN), 10) == []
    node.delivered(cursor, 1, 7)
    assert list(cursor.trail) == [(1, 1)] and list(cursor.recent) == [(1, 7)]
    assert cursor.trail.maxlen == 8
    node.reset(cursor, "f")
    assert not cursor.trail and cursor.last_at(5) is None
    node.delivered(cursor, 1, 8)
    assert list(cursor.trail) == [(2, 1)]


async def test_a_publish_given_an_offset_already_delivered_renews_the_epoch_at_once():
    # After a lossy failover the node's subscription is broken for a while (no notifications),
    # but its own publish gets back an offset it had delivered: proof that writes were lost.
    # The epoch is renewed then, not when notifications return.
    import asyncio

    from realtime_channels.channel_log import StreamPosition

    muted = False
    manager = memory_manager(lambda: muted)
    cursor = await manager.open_channel(ROOM)
    for i in range(4):
        await manager.publish("/chat", "room:a", "message", [{"n": i}])
    await asyncio.sleep(0.05)
    epoch = cursor.epoch
    assert cursor.position == (4, epoch)
    # As if this node had also delivered 5..7, which the promoted replica never had.
    times = dict(cursor.recent)
    for offset in (5, 6, 7):
        manager.deliveries.delivered(cursor, offset, times[4] + offset)
    muted = True
    result = await manager.publish("/chat", "room:a", "message", [{"n": 4}])  # takes offset 5 again
    assert result.position == StreamPosition(5, epoch) and not result.duplicate
    await asyncio.sleep(0.05)
    renewed = await manager.log.position(ROOM)
    assert renewed.epoch != epoch, "the epoch must change although no notification arrived"
    history = await manager.log.history(ROOM, since=StreamPosition(6, epoch), limit=10)
    assert not history.recoverable  # a client holding the lost offset 6 is told, not given a hole
    # A duplicate (idempotency) or an offset beyond what was delivered is no sign of loss.
    muted = False
    other = await manager.open_channel(OTHER)
    for i in range(3):
        await manager.publish("/chat", "room:b", "message", [{"n": i}], idempotency_key="same")
    await asyncio.sleep(0.05)
    assert (await manager.log.position(OTHER)).epoch == other.epoch
    await manager.stop()
