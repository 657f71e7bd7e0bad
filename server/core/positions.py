"""Recovery bookkeeping: what a node delivered per channel, and what a socket surely received.

The official JS client remembers one string: the offset of the last event it received. Ours
names one channel position (:func:`~server.core.envelope.offset_token`), the same for every
recipient so one frame serves a whole room. To turn it into a position in *every* channel of
the socket, a node keeps:

* a :class:`ChannelCursor` per channel it delivers: the channel's epoch, the offset delivered
  last, and a bounded *trail* of ``(seq, offset)`` — ``seq`` counts every publication this
  node delivered, so trails of different channels merge into the order sockets received them;
* a :class:`SocketPositions` per socket: an *origin* vector (positions the client is known to
  have: when it joined, when it recovered, or — after a ping it answered — everything
  delivered before that ping) and the node ``seq`` the origin holds at.

Everything after the origin is in the trails. When a socket ends, its session stores the
origin and its trail (the trail entries of its channels after ``base_seq``, in delivery order):
:func:`resolve` then finds the client's token in that trail, and the position of every channel
is the origin moved forward by each trail entry up to the token — exact on any node. What is
unknown (a trail cut by its bound, a node that died before it could save the trail) falls back
to the origin, which can only replay too much (duplicates), never too little.

Plain classes, no I/O: the delivery layer awaits.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable

from realtime_channels.envelope import channel_tag, parse_offset_token

# Publications per channel whose times a cursor keeps: enough to cover the writes a failover
# loses (those its replica had not received) and one intact write before them, which proves
# where the loss began (see ChannelLog.renew_epoch). About 32 KiB per busy channel (a quarter
# of its trail); a deque of tuples, as cheap to append to as it gets.
RECENT = 256

# (offset, epoch) of a channel. Epoch "" with offset 0: the channel did not exist yet.
Position = tuple[int, str]
NOWHERE: Position = (0, "")
# A cursor's trail and recent publications before its channel's first delivery (read-only).
NOTHING: tuple[()] = ()


class ChannelCursor:
    """This node's delivery state of one channel.

    :param offset: the offset delivered last (where delivery continues from).
    :param epoch: the channel's epoch, ``""`` while it does not exist.
    :param trail_length: how many ``(seq, offset)`` pairs the trail keeps.
    """

    __slots__ = ("offset", "epoch", "trail", "trail_length", "tag", "catching_up", "recent", "previous_epoch",
                 "switched_at", "replaced_until")

    def __init__(self, offset: int, epoch: str, tag: str, trail_length: int) -> None:
        self.offset = offset
        self.epoch = epoch
        self.tag = tag
        # Both deques are created at the channel's first delivery (Deliveries.delivered): every
        # socket has a channel of its own that mostly never carries a publication, and two
        # empty deques are 1.5 KiB (a deque allocates its first 64-slot block up front).
        self.trail: deque[tuple[int, int]] | tuple[()] = NOTHING
        self.trail_length = trail_length
        # True while a history read fills a gap: notifications wait for it.
        self.catching_up = False
        # (offset, time_ms) of the last few publications delivered, to tell a publication
        # already delivered from a new one that reuses its offset (see Deliveries.reused).
        self.recent: deque[tuple[int, int]] | tuple[()] = NOTHING
        # Set when the channel's epoch was renewed after a failover lost writes (see
        # Deliveries.continue_epoch): the epoch before, the node seq of the switch, and the
        # offset delivered last before it (publications up to it may be delivered already).
        self.previous_epoch = ""
        self.switched_at = 0
        self.replaced_until = 0

    @property
    def position(self) -> Position:
        return self.offset, self.epoch

    def last_at(self, seq: int) -> int | None:
        """The offset this node had delivered of the channel when its ``seq`` counter was
        ``seq``, if the trail still tells (None: no entry at or before ``seq`` kept)."""
        trail = self.trail
        if not trail or trail[0][0] > seq:
            return None
        # A deque has no bisect: the trail is short (trail_length), so a list copy is cheap
        # next to the I/O of the ping that asks.
        index = bisect_right([s for s, _ in trail], seq) - 1
        return trail[index][1]


@dataclass(slots=True)
class SocketPositions:
    """What one socket surely received, per channel.

    :param origin: channel -> position the client is known to have reached.
    :param base_seq: the node's delivery counter ``origin`` holds at; trail entries with a
        higher ``seq`` were delivered to the socket after it.
    :param replayed: publications written to the socket by its recovery, in order, before any
        live one (they are in no node trail).
    :param ping_seq: the node counter when the last ping was sent; an answer to that ping
        proves the client received everything delivered before it.
    """

    origin: dict[str, Position] = field(default_factory=dict)
    base_seq: int = 0
    replayed: list[tuple[str, int]] = field(default_factory=list)
    ping_seq: int | None = None


class Deliveries:
    """Every channel cursor of one node and the node's delivery counter.

    :param trail_length: trail entries kept per channel: a client cut off after more than
        this many publications of one channel since its last answered ping recovers with
        duplicates (never with a gap).
    """

    def __init__(self, trail_length: int = 1024) -> None:
        self.trail_length = trail_length
        self.seq = 0
        self.cursors: dict[str, ChannelCursor] = {}

    def open(self, channel: str, offset: int, epoch: str) -> ChannelCursor:
        cursor = self.cursors.get(channel)
        if cursor is None:
            cursor = self.cursors[channel] = ChannelCursor(offset, epoch, channel_tag(channel), self.trail_length)
        return cursor

    def close(self, channel: str) -> None:
        self.cursors.pop(channel, None)

    def delivered(self, cursor: ChannelCursor, offset: int, time_ms: int = 0) -> None:
        """Record that publication ``offset`` (published at ``time_ms``) of ``cursor``'s
        channel was delivered now."""
        self.seq += 1
        cursor.offset = offset
        if cursor.trail is NOTHING:
            cursor.trail = deque(maxlen=cursor.trail_length)
        if cursor.recent is NOTHING:
            cursor.recent = deque(maxlen=RECENT)
        cursor.trail.append((self.seq, offset))  # type: ignore[union-attr]
        cursor.recent.append((offset, time_ms))  # type: ignore[union-attr]

    @staticmethod
    def reused(cursor: ChannelCursor, offset: int, time_ms: int) -> bool:
        """Whether a publication at an ``offset`` already delivered is a different one: the
        Redis primary that stored the first failed before its replica had it, and the promoted
        replica gave the offset to a new publication. Told apart by publication time."""
        for known, at in reversed(cursor.recent):
            if known == offset:
                return at != time_ms
        return False

    @staticmethod
    def rewind(cursor: ChannelCursor, offset: int) -> None:
        """Deliver the channel again from ``offset`` (publications from there were lost and
        their offsets reused)."""
        cursor.offset = offset - 1
        while cursor.recent and cursor.recent[-1][0] >= offset:
            cursor.recent.pop()  # type: ignore[union-attr]

    @staticmethod
    def seen(cursor: ChannelCursor, offset: int, time_ms: int) -> bool:
        """Whether the publication at ``offset`` (published at ``time_ms``) of a continued
        epoch was delivered already, before the switch (see :meth:`continue_epoch`)."""
        return offset <= cursor.replaced_until and (offset, time_ms) in cursor.recent

    def continue_epoch(self, cursor: ChannelCursor, epoch: str, base: int) -> None:
        """The channel's epoch was renewed after a failover lost writes: ``epoch`` continues
        the cursor's below ``base`` (the same publications there), and from ``base`` on what
        this node delivered may be lost. Delivery goes on in ``epoch`` from ``base`` at the
        latest; publications delivered already (same offset and time, :meth:`seen`) are not
        sent twice.

        The trail restarts with one entry, the position at the switch, so an answered ping
        sent after it moves a socket of the old epoch into the new one (:meth:`pong`)."""
        cursor.previous_epoch = cursor.epoch
        cursor.replaced_until = cursor.offset
        cursor.epoch = epoch
        cursor.offset = min(cursor.offset, base - 1)
        cursor.trail = deque([], maxlen=cursor.trail_length)
        self.seq += 1
        cursor.switched_at = self.seq
        cursor.trail.append((self.seq, cursor.offset))

    def reset(self, cursor: ChannelCursor, epoch: str) -> None:
        """The channel started a new epoch: nothing of the old one counts any more."""
        cursor.previous_epoch = ""
        cursor.replaced_until = 0
        cursor.epoch = epoch
        cursor.offset = 0
        cursor.trail = NOTHING
        # Times of the old epoch's offsets say nothing about the new one's (a gap read would
        # take one of them for a reused offset).
        cursor.recent = NOTHING

    # ------------------------------------------------------------------ per socket

    def join(self, socket: SocketPositions, channel: str) -> None:
        """The socket is in ``channel`` from now on: it has what was delivered before."""
        cursor = self.cursors.get(channel)
        if channel not in socket.origin or (cursor is not None and socket.origin[channel][1] != cursor.epoch):
            socket.origin[channel] = cursor.position if cursor is not None else NOWHERE

    def ping(self, socket: SocketPositions) -> None:
        """A ping is being sent to the socket (after everything delivered so far)."""
        socket.ping_seq = self.seq

    def align(self, socket: SocketPositions) -> None:
        """A channel the socket joined before it existed has started: the socket's origin
        there is the start of its first epoch."""
        for channel, (offset, epoch) in socket.origin.items():
            if not epoch:
                cursor = self.cursors.get(channel)
                if cursor is not None and cursor.epoch:
                    socket.origin[channel] = (0, cursor.epoch)

    def pong(self, socket: SocketPositions) -> None:
        """The socket answered its last ping: fold everything delivered before it into the origin."""
        seq = socket.ping_seq
        if seq is None or seq <= socket.base_seq:
            return
        self.align(socket)
        moved = set()
        for channel, (offset, epoch) in socket.origin.items():
            cursor = self.cursors.get(channel)
            if cursor is None:
                continue
            if cursor.epoch != epoch:
                last = cursor.last_at(seq)
                if epoch and epoch == cursor.previous_epoch and seq >= cursor.switched_at and last is not None:
                    # The epoch was continued after a lossy failover and the client had what
                    # was delivered up to the switch and after it: it stands in the new epoch.
                    socket.origin[channel] = (last, cursor.epoch)
                    moved.add(channel)
                continue
            last = cursor.last_at(seq)
            if last is not None and last > offset:
                socket.origin[channel] = (last, epoch)
        for channel, offset in socket.replayed:
            known = socket.origin.get(channel)
            # A replay into a channel just moved to a new epoch named offsets of the old one.
            if known is not None and offset > known[0] and channel not in moved:
                socket.origin[channel] = (offset, known[1])
        socket.replayed = []
        socket.base_seq = seq
        socket.ping_seq = None

    def trail_of(self, socket: SocketPositions, limit: int) -> list[tuple[str, int]]:
        """What was delivered to the socket after its origin, in the order it was sent:
        its recovery replay, then the live publications of its channels (the newest
        ``limit`` in all). Call :meth:`align` first, and save the origin it leaves."""
        merged: list[tuple[int, str, int]] = []
        for channel, (_, epoch) in socket.origin.items():
            cursor = self.cursors.get(channel)
            if cursor is None or cursor.epoch != epoch:
                continue
            merged.extend((seq, channel, offset) for seq, offset in cursor.trail if seq > socket.base_seq)
        merged.sort()
        out = [*socket.replayed, *((channel, offset) for _, channel, offset in merged)]
        return out[-limit:] if limit else []

    def current(self, socket: SocketPositions) -> dict[str, Position]:
        """Where the socket's channels stand on this node (what has been sent to it)."""
        return {channel: (self.cursors[channel].position if channel in self.cursors else position)
                for channel, position in socket.origin.items()}


def resolve(origin: dict[str, Position], trail: Iterable[tuple[str, int]], token: object) -> dict[str, Position]:
    """The position in each channel of a client whose last received offset string is ``token``.

    :param origin: the positions the client surely had (a saved session's).
    :param trail: what was sent to it after ``origin``, in order.
    :param token: the offset string the client presented (None: it received nothing durable).
    """
    vector = dict(origin)
    parsed = parse_offset_token(token)
    if parsed is None:
        return vector
    offset, tag = parsed
    tags = {channel_tag(channel): channel for channel in origin}
    channel = tags.get(tag)
    if channel is None:
        return vector
    entries = list(trail)
    try:
        index = entries.index((channel, offset))
    except ValueError:
        # Not in the trail: either sent before the origin (then the origin already covers it)
        # or the trail lost it to its bound; the token still proves this much.
        # (An epoch of "" stays: the reader takes the channel's epoch then.)
        if offset > vector[channel][0]:
            vector[channel] = (offset, vector[channel][1])
        return vector
    for name, at in entries[:index + 1]:
        known = vector.get(name)
        if known is not None and at > known[0]:
            vector[name] = (at, known[1])
    return vector
