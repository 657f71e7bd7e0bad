"""ChannelLog: the durable unit of delivery, one bounded log per channel.

A *channel* is a room of a namespace, or one per socket or user for direct emits. Each
channel has its own history, offsets and epoch, modelled on Centrifuge's broker:

* ``publish`` is one atomic step — the idempotency check, the append with trimming (by count
  and by age), the notification to subscribed nodes — and returns a :class:`StreamPosition`.
* Offsets are integers that grow by exactly 1 per publication within an epoch, so a reader
  that sees offset n+2 after n knows it missed n+1 and reads it from ``history``.
* The epoch is a random string made with the channel's first publication and kept while the
  channel exists. Whenever the history is lost (Redis flushed, memory node restarted, channel
  expired after ``max_age`` without a publication) the next publication starts a new epoch, so
  a reader holding an old position is told recovery is impossible instead of getting a
  partial replay.
* A failover can lose a channel's newest publications while subscribers already had them, and
  the promoted replica then gives their offsets to new publications. A node that delivered them
  says so (``renew_epoch``): the channel gets a new epoch that *continues* the previous one
  below a base offset, so a reader positioned before the loss goes on exactly, and one that had
  a lost publication is told recovery is impossible instead of silently missing its successor.
* Reading never creates anything: the position of a channel that does not exist is
  :data:`EMPTY` (offset 0, epoch ``""``).

This module holds the contract, the rules both implementations share, and the memory
implementation. It imports nothing from the server: only the standard library.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, replace
from typing import Awaitable, Callable, Iterable, Protocol, Sequence

from .routes import check_tag, route_of

log = logging.getLogger("realtime_channels.channel_log")

# Channel names and idempotency keys go into Redis key names between a hash tag's braces, so
# braces would let two channels share keys; control characters would corrupt log lines.
_NAME_FORBIDDEN = re.compile(r"[{}\x00-\x1f\x7f]")
MAX_CHANNEL_LENGTH = 256
MAX_IDEMPOTENCY_KEY_LENGTH = 128
# Epochs are made by new_epoch(); what is read back from storage must look like one.
EPOCH_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ChannelLogError(Exception):
    """Storage returned something that is not a valid channel log state (it is not trusted)."""


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """Where a channel stands.

    :param offset: the offset of the newest publication (0 before the first one).
    :param epoch: the channel's epoch; ``""`` when the channel does not exist.
    """

    offset: int
    epoch: str


EMPTY = StreamPosition(0, "")


@dataclass(frozen=True, slots=True)
class Publication:
    """One entry of a channel's history.

    :param offset: its place in the channel (1, 2, 3, ... within an epoch).
    :param data: the payload, opaque bytes.
    :param time_ms: when it was published, milliseconds since the Unix epoch (storage clock).
    :param epoch: the epoch the offset belongs to.
    """

    offset: int
    data: bytes
    time_ms: int
    epoch: str

    @property
    def position(self) -> StreamPosition:
        return StreamPosition(self.offset, self.epoch)


@dataclass(frozen=True, slots=True)
class PublishResult:
    """What ``publish`` returns.

    :param position: the publication's offset and the channel's epoch.
    :param duplicate: True when the idempotency key was seen within ``dedupe_ttl``: nothing
        was appended or notified, and ``position`` is the first publication's.
    """

    position: StreamPosition
    duplicate: bool


@dataclass(frozen=True, slots=True)
class HistoryResult:
    """What ``history`` returns.

    :param publications: oldest first.
    :param position: the channel's current position (read in the same atomic step).
    :param recoverable: False when the reader's ``since`` cannot be continued exactly — the
        epoch changed, or publications after ``since.offset`` were trimmed or are unreadable.
        ``publications`` then holds the oldest retained entries the reader has not seen.
    :param previous_epoch: when the epoch was renewed after a failover lost writes
        (:meth:`ChannelLog.renew_epoch`), the epoch before it; ``""`` otherwise.
    :param base: with ``previous_epoch``: offsets below ``base`` are the same publications in
        both epochs (a reader at ``(o, previous_epoch)`` with ``o < base`` continues in this
        one); from ``base`` on the previous epoch's publications were lost.
    """

    publications: list[Publication]
    position: StreamPosition
    recoverable: bool
    previous_epoch: str = ""
    base: int = 0


@dataclass(frozen=True, slots=True)
class ChannelBounds:
    """The limits every channel log holds, in every implementation.

    :param max_length: publications kept per channel; the oldest are dropped on publish.
    :param max_age: seconds a publication is kept; a channel with no publication for this
        long disappears entirely (history, offset and epoch).
    :param dedupe_ttl: seconds an idempotency key is remembered.
    :param max_data_size: largest payload accepted by ``publish``, in bytes.
    """

    max_length: int = 10_000
    max_age: float = 3600.0
    dedupe_ttl: float = 300.0
    max_data_size: int = 1 << 20

    def __post_init__(self) -> None:
        if not isinstance(self.max_length, int) or isinstance(self.max_length, bool) or self.max_length < 1:
            raise ValueError(f"max_length must be an integer >= 1, got {self.max_length!r}")
        for name in ("max_age", "dedupe_ttl"):
            value = getattr(self, name)
            # Redis expiries are whole milliseconds: anything shorter would mean "never".
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not (
                    math.isfinite(value) and value >= 0.001):
                raise ValueError(f"{name} must be a number of seconds >= 0.001, got {value!r}")
        if (not isinstance(self.max_data_size, int) or isinstance(self.max_data_size, bool)
                or self.max_data_size < 1):
            raise ValueError(f"max_data_size must be an integer >= 1, got {self.max_data_size!r}")

    @property
    def max_age_ms(self) -> int:
        return max(1, round(self.max_age * 1000))

    @property
    def dedupe_ttl_ms(self) -> int:
        return max(1, round(self.dedupe_ttl * 1000))


# The owner's callbacks. Both are called from the log's own task and must not block.
OnPublication = Callable[[str, Publication], None]
"""Called with (channel, publication) for each notification of a subscribed channel."""
OnResync = Callable[[str], None]
"""Called with a channel whose notifications may have been missed (its subscription was
re-established): the owner reads its history from the last offset it delivered."""


class ChannelLog(Protocol):
    """Bounded per-channel history with offsets, epochs and notifications.

    One memory and one Redis implementation; one contract test suite runs against both.
    """

    bounds: ChannelBounds

    async def publish(self, channel: str, data: bytes, *,
                      idempotency_key: str | None = None) -> PublishResult:
        """Append ``data`` to ``channel`` atomically: dedupe, append, trim, notify.

        :param channel: the channel name (see :func:`check_channel`).
        :param data: the payload, at most ``bounds.max_data_size`` bytes.
        :param idempotency_key: when given and seen on this channel within
            ``bounds.dedupe_ttl``, nothing is published and the first result is returned.
        """

    async def history(self, channel: str, *, since: StreamPosition | None = None,
                      limit: int) -> HistoryResult:
        """Publications of ``channel``, oldest first, and its current position.

        :param since: None for the newest ``limit`` publications; otherwise the publications
            after ``since.offset``, oldest first (page by calling again with the last one).
        :param limit: at most this many publications (0: only the position).
        """

    async def position(self, channel: str) -> StreamPosition:
        """The channel's current position; :data:`EMPTY` when it does not exist.
        Never creates anything."""

    async def positions(self, channels: Sequence[str]) -> list[StreamPosition]:
        """:meth:`position` of each of ``channels``, in their order, read together (one round
        trip per server holding them)."""

    async def renew_epoch(self, channel: str, epoch: str,
                          delivered: Iterable[tuple[int, int]]) -> StreamPosition:
        """Say "I delivered these publications of ``channel`` in ``epoch``", after noticing
        that a failover lost some (an offset reused by another publication, or the channel's
        newest offset went back). One atomic step: when the channel is still at ``epoch`` and
        a delivered publication is missing or is another one now (different time), the
        channel gets a new epoch continuing ``epoch`` below the lowest such offset (see
        :attr:`HistoryResult.base`); its history is kept. Returns the channel's position
        after it (unchanged when nothing was lost or someone renewed already).

        :param epoch: the epoch the publications were delivered in.
        :param delivered: ``(offset, time_ms)`` of publications delivered in ``epoch``, any
            order, at most :data:`MAX_DELIVERED` (the newest count).
        """

    async def subscribe(self, channels: Iterable[str]) -> None:
        """Receive notifications for ``channels`` from now on. Returns once the subscription
        is in effect, so a history read after it misses nothing."""

    async def subscribe_route(self, tag: str, on_resync: Callable[[], None]) -> None:
        """Receive notifications for every channel routed to ``tag`` (see :mod:`.routes`),
        subscribed or not, from now on, until :meth:`close`: a node holds its own route, so a
        channel of its own sockets needs no subscription and no cursor until it carries a
        publication. Returns once in effect. ``on_resync`` is called when notifications of
        the route may have been missed (its subscription was re-established): the owner reads
        the history of each of its channels there, subscribed or not."""

    def subscribe_new(self, channels: Iterable[str]) -> bool:
        """Receive notifications for ``channels``, which nobody can have published to yet
        (names no one else knows: a new socket's own room), without waiting: the subscription
        is sent with the others of this loop turn (or a few milliseconds' worth, under
        load), and its confirmation is not awaited nor followed by a resync (unless it went
        out on a connection being made: see :meth:`subscriptions_written`). Returns False
        when it cannot be sent now (then :meth:`subscribe` is the way); the caller holds what
        it delivers from offset 0 of no epoch."""

    def subscriptions_written(self) -> Awaitable[None] | None:
        """None when no subscription waits to be sent (or they are in effect at once); else
        an awaitable done once those asked for so far are written to the broker (their
        confirmation may still be on its way), or handed to a connection being made (then
        they are resynced once confirmed, as after any reconnection). A reply that makes a
        :meth:`subscribe_new` channel's name known waits for it."""

    def confirmed(self, channel: str) -> bool:
        """False while a :meth:`subscribe_new` of ``channel`` is not confirmed: a publication
        to it made meanwhile may precede the subscription, and is read back from the history."""

    async def unsubscribe(self, channels: Iterable[str]) -> None:
        """Stop notifications for ``channels``."""

    async def trim_expired(self) -> int:
        """Drop publications older than ``max_age`` and expired channels and keys even where
        nobody publishes; returns how many things were removed."""

    async def close(self) -> None:
        """Stop background work and release connections (not the ones the owner passed in)."""


# ------------------------------------------------------------------------- shared rules


def check_channel(channel: object) -> str:
    """Return ``channel`` if it is a valid channel name, else raise ValueError:
    1–256 characters, no braces, no control characters."""
    return _check_name("channel", channel, MAX_CHANNEL_LENGTH)


def check_idempotency_key(key: object) -> str:
    """Return ``key`` if it is a valid idempotency key (1–128 characters, no braces, no
    control characters), else raise ValueError."""
    return _check_name("idempotency_key", key, MAX_IDEMPOTENCY_KEY_LENGTH)


def _check_name(what: str, value: object, max_length: int) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r:.80}")
    if len(value) > max_length:
        raise ValueError(f"{what} is longer than {max_length} characters")
    if _NAME_FORBIDDEN.search(value):
        raise ValueError(f"{what} must not contain braces or control characters: {value!r:.80}")
    return value


def check_data(data: object, bounds: ChannelBounds) -> bytes:
    """Return ``data`` as bytes if it is bytes-like and within ``bounds.max_data_size``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > bounds.max_data_size:
        raise ValueError(f"data is {len(data)} bytes, more than max_data_size {bounds.max_data_size}")
    return data


def check_limit(limit: object, bounds: ChannelBounds) -> int:
    """Return ``limit`` capped at ``bounds.max_length`` (nothing beyond that is kept)."""
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise ValueError(f"limit must be an integer >= 0, got {limit!r:.80}")
    return min(limit, bounds.max_length)


def check_since(since: object) -> StreamPosition | None:
    if since is None:
        return None
    if not isinstance(since, StreamPosition):
        raise ValueError(f"since must be a StreamPosition or None, got {type(since).__name__}")
    if not isinstance(since.offset, int) or isinstance(since.offset, bool) or since.offset < 0:
        raise ValueError(f"since.offset must be an integer >= 0, got {since.offset!r:.80}")
    if not isinstance(since.epoch, str):
        raise ValueError("since.epoch must be a string")
    return since


# renew_epoch looks at this many delivered publications at most.
MAX_DELIVERED = 1024


def check_epoch(epoch: object) -> str:
    """Return ``epoch`` if it is a string (any string: one that is no epoch matches none)."""
    if not isinstance(epoch, str):
        raise ValueError(f"epoch must be a string, got {type(epoch).__name__}")
    return epoch


def check_delivered(delivered: object) -> list[tuple[int, int]]:
    """Return ``delivered`` as a list of ``(offset >= 1, time_ms >= 0)`` pairs, the newest
    :data:`MAX_DELIVERED` of them; raise ValueError for anything else."""
    try:
        pairs = [(offset, time_ms) for offset, time_ms in delivered]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError("delivered must be (offset, time_ms) pairs") from None
    for offset, time_ms in pairs:
        if not (isinstance(offset, int) and not isinstance(offset, bool) and 1 <= offset < 10**15
                and isinstance(time_ms, int) and not isinstance(time_ms, bool) and 0 <= time_ms < 10**15):
            raise ValueError(f"delivered holds a bad pair ({offset!r:.20}, {time_ms!r:.20})")
    return pairs[-MAX_DELIVERED:]


def lost_base(delivered: list[tuple[int, int]], top: int, first_retained: int,
              stored_time: Callable[[int], int | None]) -> int | None:
    """Where a channel at offset ``top`` lost publications a reader delivered, or None.

    A delivered offset above ``top``, or a retained one whose stored publication is missing or
    has another time, was lost. A replica holds a prefix of its primary's writes, so everything
    up to an intact publication is intact: the base is the offset after the highest intact one
    below the lowest lost one. When none is, the loss may have begun before what ``delivered``
    shows, and the base is 1 (nothing of the previous epoch continues).

    :param first_retained: the oldest offset still stored; delivered offsets below it were
        trimmed, not lost, and tell nothing.
    :param stored_time: the stored time of an offset in ``[first_retained, top]``, None if missing.
    """
    lost: int | None = None
    intact: list[int] = []
    for offset, time_ms in delivered:
        if offset > top or (offset >= first_retained and stored_time(offset) != time_ms):
            lost = offset if lost is None else min(lost, offset)
        elif offset >= first_retained:
            intact.append(offset)
    if lost is None:
        return None
    return max((i + 1 for i in intact if i < lost), default=1)


def continued(since: StreamPosition, epoch: str, previous_epoch: str, base: int) -> StreamPosition:
    """``since`` in a channel now at ``epoch``: a position of ``previous_epoch`` below ``base``
    names the same publications in ``epoch`` (see :meth:`ChannelLog.renew_epoch`)."""
    if previous_epoch and since.epoch == previous_epoch and since.offset < base:
        return StreamPosition(since.offset, epoch)
    return since


def new_epoch() -> str:
    """A fresh random epoch."""
    return secrets.token_hex(8)


def read_start(since: StreamPosition | None, epoch: str) -> int:
    """The first offset a reader positioned at ``since`` has not seen, in a channel now at
    ``epoch``: a position from another epoch has seen nothing of this one."""
    if since is None:
        return 1
    if since.epoch == epoch:
        return since.offset + 1
    return 1


def is_recoverable(since: StreamPosition, epoch: str, top: int, first_retained: int) -> bool:
    """Whether a reader at ``since`` can continue exactly in a channel at (``top``,
    ``epoch``) whose oldest retained (and unexpired) publication is ``first_retained``
    (``top + 1`` when none is).

    A reader that saw the channel before it existed (``since`` is :data:`EMPTY`) can
    continue any epoch whose first publication is still retained.
    """
    if since.epoch != epoch:
        return since == EMPTY and (top == 0 or first_retained <= 1)
    if since.offset > top:
        return False  # a position this channel never had
    return since.offset == top or since.offset + 1 >= first_retained


def is_valid_epoch(value: object) -> bool:
    return isinstance(value, str) and EPOCH_RE.fullmatch(value) is not None


# ------------------------------------------------------------------------- memory


class _Channel:
    __slots__ = ("epoch", "top", "last_ms", "entries", "previous_epoch", "base")

    def __init__(self, epoch: str) -> None:
        self.epoch = epoch
        self.top = 0
        self.last_ms = 0  # time of the newest publication
        self.entries: deque[Publication] = deque()
        # Set by renew_epoch: the epoch this one continues below `base`.
        self.previous_epoch = ""
        self.base = 0


class MemoryChannelLog:
    """In-process channel log for a single node; a new instance is a new set of epochs.

    Holds the same bounds as Redis: ``max_length`` publications per channel, publications
    and whole channels gone after ``max_age`` (checked on every access and by a background
    sweep, so nothing grows while nobody publishes), idempotency keys gone after
    ``dedupe_ttl``.

    :param bounds: the limits.
    :param on_publication: called (soon after the publish, never inside it) for each
        publication of a subscribed channel.
    :param on_resync: never called: an in-process log cannot miss a notification. Accepted
        so both implementations take the same arguments.
    :param sweep_interval: seconds between background sweeps (:meth:`trim_expired`); by
        default a quarter of the shorter of ``max_age`` and ``dedupe_ttl``, at most 60.
    :param clock: seconds since the Unix epoch; tests may pass their own.
    """

    def __init__(self, bounds: ChannelBounds = ChannelBounds(), *,
                 on_publication: OnPublication | None = None, on_resync: OnResync | None = None,
                 sweep_interval: float | None = None, clock: Callable[[], float] = time.time) -> None:
        self.bounds = bounds
        self.on_publication = on_publication
        self.on_resync = on_resync
        self.sweep_interval = sweep_interval if sweep_interval is not None else min(
            60.0, max(0.01, min(bounds.max_age, bounds.dedupe_ttl) / 4))
        self._clock = clock
        # Ordered by last publication, oldest first: expired channels are found at the front.
        self._channels: OrderedDict[str, _Channel] = OrderedDict()
        # Ordered by creation; every key lives dedupe_ttl, so the oldest are at the front.
        self._idempotency: OrderedDict[tuple[str, str], tuple[int, PublishResult]] = OrderedDict()
        self._subscribed: set[str] = set()
        self._routes: set[str] = set()  # route tags held (subscribe_route)
        self._sweeper: asyncio.Task | None = None
        self._closed = False

    # Sizes, for operators and tests: everything this log holds is counted here.
    @property
    def channel_count(self) -> int:
        return len(self._channels)

    @property
    def idempotency_count(self) -> int:
        return len(self._idempotency)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _live(self, channel: str, now_ms: int) -> _Channel | None:
        """The channel, or None if it does not exist or has expired (then it is dropped)."""
        state = self._channels.get(channel)
        if state is not None and now_ms - state.last_ms > self.bounds.max_age_ms:
            del self._channels[channel]
            return None
        return state

    def _trim_age(self, state: _Channel, now_ms: int) -> int:
        cutoff = now_ms - self.bounds.max_age_ms
        dropped = 0
        while state.entries and state.entries[0].time_ms < cutoff:
            state.entries.popleft()
            dropped += 1
        return dropped

    async def publish(self, channel: str, data: bytes, *,
                      idempotency_key: str | None = None) -> PublishResult:
        check_channel(channel)
        data = check_data(data, self.bounds)
        if idempotency_key is not None:
            check_idempotency_key(idempotency_key)
        self._ensure_sweeper()
        now_ms = self._now_ms()
        if idempotency_key is not None:
            seen = self._idempotency.get((channel, idempotency_key))
            if seen is not None and now_ms - seen[0] <= self.bounds.dedupe_ttl_ms:
                return PublishResult(seen[1].position, True)
        state = self._live(channel, now_ms)
        if state is None:
            state = self._channels[channel] = _Channel(new_epoch())
        # Entry times never go backwards within a channel, even if the clock does: age
        # trimming stops at the first young entry.
        state.last_ms = max(now_ms, state.last_ms)
        state.top += 1
        publication = Publication(state.top, data, state.last_ms, state.epoch)
        state.entries.append(publication)
        while len(state.entries) > self.bounds.max_length:
            state.entries.popleft()
        self._trim_age(state, now_ms)
        self._channels.move_to_end(channel)
        result = PublishResult(publication.position, False)
        if idempotency_key is not None:
            key = (channel, idempotency_key)
            self._idempotency.pop(key, None)
            self._idempotency[key] = (now_ms, result)
        if self.on_publication is not None and self._announced(channel):
            # Like Redis, the subscriber hears of it after publish returns; call_soon keeps
            # the publication order.
            asyncio.get_running_loop().call_soon(self._notify, channel, publication)
        return result

    def _notify(self, channel: str, publication: Publication) -> None:
        if self.on_publication is not None and self._announced(channel):
            self.on_publication(channel, publication)

    async def history(self, channel: str, *, since: StreamPosition | None = None,
                      limit: int) -> HistoryResult:
        check_channel(channel)
        since = check_since(since)
        limit = check_limit(limit, self.bounds)
        now_ms = self._now_ms()
        state = self._live(channel, now_ms)
        if state is None:
            return HistoryResult([], EMPTY, since is None or is_recoverable(since, "", 0, 1))
        # Publications older than max_age are invisible even before a sweep removes them.
        cutoff = now_ms - self.bounds.max_age_ms
        retained = [p for p in state.entries if p.time_ms >= cutoff]
        first = retained[0].offset if retained else state.top + 1
        position = StreamPosition(state.top, state.epoch)
        renewed = (state.previous_epoch, state.base)
        if since is None:
            return HistoryResult(retained[-limit:] if limit else [], position, True, *renewed)
        since = continued(since, state.epoch, *renewed)
        start = max(read_start(since, state.epoch), first)
        # Offsets are contiguous in memory, so the start is found by arithmetic.
        chosen = retained[start - first:start - first + limit] if limit else []
        return HistoryResult(chosen, position, is_recoverable(since, state.epoch, state.top, first), *renewed)

    async def position(self, channel: str) -> StreamPosition:
        check_channel(channel)
        state = self._live(channel, self._now_ms())
        return EMPTY if state is None else StreamPosition(state.top, state.epoch)

    async def positions(self, channels: Sequence[str]) -> list[StreamPosition]:
        now_ms = self._now_ms()
        out = []
        for channel in channels:
            check_channel(channel)
            state = self._live(channel, now_ms)
            out.append(EMPTY if state is None else StreamPosition(state.top, state.epoch))
        return out

    async def renew_epoch(self, channel: str, epoch: str,
                          delivered: Iterable[tuple[int, int]]) -> StreamPosition:
        check_channel(channel)
        check_epoch(epoch)
        pairs = check_delivered(delivered)
        state = self._live(channel, self._now_ms())
        if state is None:
            return EMPTY
        position = StreamPosition(state.top, state.epoch)
        if state.epoch != epoch:
            return position  # renewed already, or a new epoch altogether
        first = state.entries[0].offset if state.entries else state.top + 1
        # An in-process log loses nothing, but a caller may know of publications it never
        # stored: the same contract as Redis.
        base = lost_base(pairs, state.top, first, lambda o: state.entries[o - first].time_ms)
        if base is None:
            return position
        state.previous_epoch, state.base, state.epoch = epoch, base, new_epoch()
        state.entries = deque(replace(p, epoch=state.epoch) for p in state.entries)
        return StreamPosition(state.top, state.epoch)

    async def subscribe(self, channels: Iterable[str]) -> None:
        if self._closed:
            raise RuntimeError("channel log is closed")
        names = [check_channel(c) for c in channels]
        self._subscribed.update(names)

    async def subscribe_route(self, tag: str, on_resync: Callable[[], None]) -> None:
        if self._closed:
            raise RuntimeError("channel log is closed")
        self._routes.add(check_tag(tag))  # on_resync is never called: nothing here can be missed

    def _announced(self, channel: str) -> bool:
        return channel in self._subscribed or (bool(self._routes) and route_of(channel) in self._routes)

    def subscribe_new(self, channels: Iterable[str]) -> bool:
        self._subscribed.update(check_channel(c) for c in channels)
        return True

    def subscriptions_written(self) -> None:
        return None  # nothing to write: a subscription is in effect at once

    def confirmed(self, channel: str) -> bool:
        return True

    async def unsubscribe(self, channels: Iterable[str]) -> None:
        self._subscribed.difference_update(channels)

    async def trim_expired(self) -> int:
        now_ms = self._now_ms()
        removed = 0
        # Channels are ordered by last publication: stop at the first live one.
        while self._channels:
            name, state = next(iter(self._channels.items()))
            if now_ms - state.last_ms <= self.bounds.max_age_ms:
                break
            del self._channels[name]
            removed += 1
        for state in self._channels.values():
            removed += self._trim_age(state, now_ms)
        while self._idempotency:
            key, (created, _) = next(iter(self._idempotency.items()))
            if now_ms - created <= self.bounds.dedupe_ttl_ms:
                break
            del self._idempotency[key]
            removed += 1
        return removed

    def _ensure_sweeper(self) -> None:
        if self._sweeper is None and not self._closed:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                await self.trim_expired()
            except Exception:  # a bug here must not stop the bounds from being enforced
                log.exception("channel log sweep failed")

    async def close(self) -> None:
        self._closed = True
        self._subscribed.clear()
        self._routes.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            try:
                await self._sweeper
            except asyncio.CancelledError:
                pass
            self._sweeper = None
