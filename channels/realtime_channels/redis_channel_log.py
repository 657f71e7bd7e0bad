"""The Redis channel log: one stream and one meta hash per channel, one Lua script per publish.

Key layout (every key of a channel shares the hash tag ``{<channel>}``, so each script touches
exactly one Redis Cluster slot)::

    <prefix>:{<channel>}:stream      XADD'ed with the explicit ID "<offset>-0", fields d (data), t (ms)
    <prefix>:{<channel>}:meta        hash: e (epoch), o (newest offset), t (newest entry's ms);
                                     after a lossy failover (renew_epoch) also pe (the epoch
                                     this one continues) and b (the offset it continues below)
    <prefix>:{<channel>}:idem:<key>  hash: o, e of the first publication with that key
    <prefix>:{<channel>}:pub         the notification channel (PUBLISH, or SPUBLISH when sharded)

A channel that routes to a node (a socket's own room, a new guest's user room: see
:mod:`.routes`) has its keys under its route's hash tag instead, and is announced on its
route's name, which it shares with every other channel of that route (so the script's keys and
its SPUBLISH stay in one slot)::

    <prefix>:{@<tag>}:<channel>:stream, :meta, :idem:<key>
    <prefix>:{@<tag>}:route          the route's notification channel

Stream and meta expire ``max_age`` after the channel's last publication, so a channel nobody
publishes to disappears entirely and its next publication starts a new epoch; entries older than
``max_age`` in a live channel are trimmed on publish, hidden from reads, and dropped by
:meth:`RedisChannelLog.trim_expired`. Reads run read-only scripts and never create a key.

Subscriptions (per-channel SUBSCRIBE or SSUBSCRIBE, kept alive across lost connections and
failovers, with a resync signal to the owner) live in :mod:`.redis_pubsub`.

A notification is the msgpack array ``[1, offset, epoch, time_ms, data]`` (built in Lua with
``cmsgpack``; :func:`encode_notification` makes the same bytes); on a route it also names its
channel: ``[1, offset, epoch, time_ms, data, channel]``.

The key layout, the script texts and the payload codec are plain module-level definitions with
no server imports, so an emitter outside the server publishes through the very same script.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import msgpack
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import (AskError, MovedError, NoScriptError, RedisClusterException, RedisError, ResponseError,
                              TryAgainError)

from .redis_batch import batcher_for
from .channel_log import (
    EMPTY,
    MAX_CHANNEL_LENGTH,
    ChannelBounds,
    ChannelLogError,
    HistoryResult,
    OnPublication,
    OnResync,
    Publication,
    PublishResult,
    StreamPosition,
    check_channel,
    check_data,
    check_delivered,
    check_epoch,
    check_idempotency_key,
    check_limit,
    check_since,
    continued,
    is_recoverable,
    is_valid_epoch,
    new_epoch,
    read_start,
)
from .redis_pubsub import WRITE_PACE, Subscriptions, Throttled
from .routes import check_tag, route_of

log = logging.getLogger("realtime_channels.redis_channel_log")

NOTIFICATION_VERSION = 1
_PREFIX_FORBIDDEN = re.compile(r"[{}\x00-\x20\x7f]")
_OFFSET_ID = re.compile(rb"(\d{1,15})-0")
_DIGITS = re.compile(rb"\d{1,15}")

# ------------------------------------------------------------------------- key layout


@dataclass(frozen=True, slots=True)
class ChannelKeys:
    """The Redis names of one channel (all in one hash slot)."""

    stream: str
    meta: str
    notify: str


def check_prefix(prefix: object) -> str:
    """Return ``prefix`` if it can start key names (1–64 characters, no braces, spaces or
    control characters: they would change the hash tag), else raise ValueError."""
    if not isinstance(prefix, str) or not 1 <= len(prefix) <= 64 or _PREFIX_FORBIDDEN.search(prefix):
        raise ValueError(f"prefix must be 1-64 characters without braces or spaces, got {prefix!r:.80}")
    return prefix


def _layout(prefix: str, channel: str) -> tuple[str, str]:
    """``(what every key name of channel starts with, its hash tag included; the name its
    publications are announced on: its own, or its route's)``: the one spelling of both."""
    route = route_of(channel)
    if route is None:
        return f"{prefix}:{{{channel}}}", f"{prefix}:{{{channel}}}:pub"
    return f"{prefix}:{{@{route}}}:{channel}", route_name(prefix, route)


def route_name(prefix: str, tag: str) -> str:
    """The name the publications of every channel routed to ``tag`` are announced on."""
    return f"{prefix}:{{@{tag}}}:route"


def _tag(prefix: str, channel: str) -> str:
    return _layout(prefix, channel)[0]


def notify_name(prefix: str, channel: str) -> str:
    """The name ``channel``'s publications are announced on: its own, or its route's."""
    return _layout(prefix, channel)[1]


def _is_route(name: bytes) -> bool:
    """Whether a notification name is a route's (shared by the channels routed there; a
    channel's own ends ``}:pub``, and a channel name holds no brace)."""
    return name.endswith(b"}:route")


def channel_keys(prefix: str, channel: str) -> ChannelKeys:
    """The stream, meta and notification names of ``channel`` under ``prefix``."""
    tag, notify = _layout(prefix, channel)
    return ChannelKeys(f"{tag}:stream", f"{tag}:meta", notify)


def idempotency_key_name(prefix: str, channel: str, key: str) -> str:
    """The Redis key remembering idempotency ``key`` of ``channel``."""
    return f"{_tag(prefix, channel)}:idem:{key}"


def stream_key_pattern(prefix: str) -> str:
    """A SCAN pattern matching every channel stream under ``prefix``, routed ones included
    (``<prefix>:{@<tag>}:<channel>:stream``), glob characters of the prefix escaped. (The other
    stores' keys under ``prefix`` start ``<prefix>:<word>:`` or end otherwise.)"""
    return re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + ":{*:stream"


# ------------------------------------------------------------------------- scripts
# Each script writes only after every check that can fail has passed: Redis does not roll a
# script back on error.

# Helpers shared by the scripts. Entry times never decrease along a stream (the publish
# script makes sure), so the oldest entry that has not expired is found by a binary search
# over offsets: O(log n) XRANGE calls instead of a walk over every expired entry.
_LUA_HELPERS = r"""
local function entry_offset(entry)
  return tonumber(string.match(entry[1], '^(%d+)%-'))
end

local function entry_time(entry)
  local fields = entry[2]
  for i = 1, #fields - 1, 2 do
    if fields[i] == 't' then return tonumber(fields[i + 1]) end
  end
  return nil
end

local function alive(entry, cutoff)
  local t = entry_time(entry)
  return t ~= nil and t >= cutoff
end

-- The offset of the oldest entry of `stream` whose time is >= cutoff, or nil.
local function first_retained(stream, cutoff)
  local head = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
  if head == nil then return nil end
  if alive(head, cutoff) then return entry_offset(head) end
  local tail = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
  if not alive(tail, cutoff) then return nil end
  local lo, hi = entry_offset(head) + 1, entry_offset(tail)
  local found = hi
  while lo <= hi do
    local mid = math.floor((lo + hi) / 2)
    local entry = redis.call('XRANGE', stream, string.format('%d', mid), '+', 'COUNT', 1)[1]
    local offset = entry_offset(entry)
    if alive(entry, cutoff) then
      found = offset
      hi = mid - 1
    else
      lo = offset + 1
    end
  end
  return found
end

local function now_ms()
  local clock = redis.call('TIME')
  return tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
end

local function valid_meta(epoch, offset, last)
  return type(epoch) == 'string' and #epoch <= 64 and string.match(epoch, '^[%w_-]+$') ~= nil
    and type(offset) == 'string' and string.match(offset, '^%d+$') ~= nil and #offset <= 15
    and (last == nil or (type(last) == 'string' and string.match(last, '^%d+$') ~= nil and #last <= 15))
end
"""

PUBLISH_SCRIPT = _LUA_HELPERS + r"""
-- KEYS: stream, meta[, idempotency key]
-- ARGV: data, max_length, max_age_ms, dedupe_ttl_ms, fresh epoch, notification channel,
--       notification command (publish or spublish)[, the channel's name: it is announced
--       on its route, which the notification names it on]
-- Returns {offset, epoch, duplicate (0/1)}.
local stream, meta, idem = KEYS[1], KEYS[2], KEYS[3]
local data, max_length, max_age_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])

if idem ~= nil then
  local seen = redis.call('HMGET', idem, 'o', 'e')
  if seen[1] then
    -- Rewritten unchanged: a write moves this connection's replication offset past the
    -- first publish, so a WAIT right after a retry waits for that publish to be replicated.
    redis.call('HSET', idem, 'o', seen[1])
    return {tonumber(seen[1]), seen[2], 1}
  end
end

local now = now_ms()
local state = redis.call('HMGET', meta, 'e', 'o', 't')
local epoch, top, last = state[1], state[2], state[3]
if epoch then
  if not valid_meta(epoch, top, last or nil) then
    return redis.error_reply('ERR corrupt channel meta in ' .. meta)
  end
  top, last = tonumber(top), tonumber(last or '0')
else
  -- A new epoch. A stream left without its meta (evicted) holds offsets of a lost epoch.
  epoch, top, last = ARGV[5], 0, 0
  redis.call('DEL', stream)
end

local offset = top + 1
-- Entry times never go backwards within a channel, even when the clock does.
local t = math.max(now, last)
local id = string.format('%d-0', offset)
-- The append first, in pcall: if the stream was tampered with, nothing has been written yet.
local added = redis.pcall('XADD', stream, 'MAXLEN', max_length, id, 'd', data, 't', string.format('%d', t))
if type(added) == 'table' and added.err then
  return redis.error_reply('ERR corrupt channel stream in ' .. stream .. ': ' .. added.err)
end
-- The notification next, also in pcall (SPUBLISH is unknown before Redis 7): on failure the
-- append is undone and nothing else has been written. Nobody sees the order: a script is atomic.
local notification
if ARGV[8] then
  notification = cmsgpack.pack({1, offset, epoch, t, data, ARGV[8]})
else
  notification = cmsgpack.pack({1, offset, epoch, t, data})
end
local notified = redis.pcall(ARGV[7], ARGV[6], notification)
if type(notified) == 'table' and notified.err then
  if top == 0 then
    redis.call('DEL', stream)
  else
    -- A stream remembers its highest ID even after XDEL: set it back, or the next append
    -- of this offset would be refused.
    redis.call('XDEL', stream, id)
    redis.pcall('XSETID', stream, string.format('%d-0', top))
  end
  return redis.error_reply('ERR cannot notify with ' .. ARGV[7] .. ': ' .. notified.err)
end
if top == 0 then redis.call('HSET', meta, 'e', epoch) end
redis.call('HINCRBY', meta, 'o', 1)
redis.call('HSET', meta, 't', string.format('%d', t))

local first = first_retained(stream, now - max_age_ms)
local head = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
if first ~= nil and entry_offset(head) < first then
  redis.call('XTRIM', stream, 'MINID', string.format('%d', first))
end
redis.call('PEXPIRE', stream, max_age_ms)
redis.call('PEXPIRE', meta, max_age_ms)

if idem ~= nil then
  redis.call('HSET', idem, 'o', string.format('%d', offset), 'e', epoch)
  redis.call('PEXPIRE', idem, ARGV[4])
end
return {offset, epoch, 0}
"""

HISTORY_SCRIPT = _LUA_HELPERS + r"""
-- KEYS: stream, meta
-- ARGV: mode ('newest' or 'since'), the offset to start from in the same epoch, the reader's
--       epoch, limit, max_age_ms
-- Returns {} when the channel does not exist, else
-- {epoch, newest offset, oldest retained offset or nil, entries (oldest first for 'since',
--  newest first for 'newest'), previous epoch or nil, base offset or nil}. A reader of the
-- previous epoch below the base continues in this one (see RENEW_SCRIPT). Read-only.
local stream, meta = KEYS[1], KEYS[2]
local state = redis.call('HMGET', meta, 'e', 'o', 'pe', 'b')
if not state[1] then return {} end
local epoch, top, previous, base = state[1], state[2], state[3], tonumber(state[4] or '')
if not valid_meta(epoch, top, nil) then return {epoch, top, false, {}, false, false} end
if previous == nil or base == nil then previous, base = false, false end
local first = first_retained(stream, now_ms() - tonumber(ARGV[5]))
local limit = tonumber(ARGV[4])
local entries = {}
if first ~= nil and limit > 0 then
  if ARGV[1] == 'newest' then
    entries = redis.call('XREVRANGE', stream, '+', string.format('%d', first), 'COUNT', limit)
  else
    local start = 1
    if ARGV[3] == epoch or (previous and ARGV[3] == previous and tonumber(ARGV[2]) <= base) then
      start = tonumber(ARGV[2])
    end
    start = math.max(start, first)
    entries = redis.call('XRANGE', stream, string.format('%d', start), '+', 'COUNT', limit)
  end
end
return {epoch, top, first or false, entries, previous, base}
"""

RENEW_SCRIPT = _LUA_HELPERS + r"""
-- KEYS: stream, meta
-- ARGV: the epoch the caller delivered in, a fresh epoch, then offset, time_ms pairs of
--       publications the caller delivered in that epoch.
-- A failover lost writes the caller had delivered: when the channel is still at that epoch
-- and a delivered offset is above the newest one, or its stored entry is missing or has
-- another time, the channel gets the fresh epoch, continuing the old one (pe) below the base
-- offset b (offsets below b are the same publications in both). The stream is kept.
-- Returns {epoch, newest offset, 1 if renewed else 0}; {} when the channel does not exist.
-- The rule is channel_log.lost_base's.
local stream, meta = KEYS[1], KEYS[2]
local state = redis.call('HMGET', meta, 'e', 'o')
if not state[1] then return {} end
local epoch, top = state[1], state[2]
if not valid_meta(epoch, top, nil) then
  return redis.error_reply('ERR corrupt channel meta in ' .. meta)
end
top = tonumber(top)
if epoch ~= ARGV[1] then return {epoch, top, 0} end
local head = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
local first = top + 1
if head ~= nil then first = entry_offset(head) end
local lost, intact = nil, {}
for i = 3, #ARGV - 1, 2 do
  local offset, t = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  local gone = offset > top
  if not gone and offset >= first then
    local id = string.format('%d-0', offset)
    local entry = redis.call('XRANGE', stream, id, id)[1]
    gone = entry == nil or entry_time(entry) ~= t
    if not gone then intact[#intact + 1] = offset end
  end
  if gone and (lost == nil or offset < lost) then lost = offset end
end
if lost == nil then return {epoch, top, 0} end
local base = 1
for _, offset in ipairs(intact) do
  if offset < lost and offset + 1 > base then base = offset + 1 end
end
redis.call('HSET', meta, 'e', ARGV[2], 'pe', epoch, 'b', string.format('%d', base))
return {ARGV[2], top, 1}
"""

TRIM_SCRIPT = _LUA_HELPERS + r"""
-- KEYS: stream. ARGV: max_age_ms. Drops entries older than max_age; returns how many.
local stream = KEYS[1]
local first = first_retained(stream, now_ms() - tonumber(ARGV[1]))
if first == nil then return redis.call('XTRIM', stream, 'MAXLEN', 0) end
return redis.call('XTRIM', stream, 'MINID', string.format('%d', first))
"""


# ------------------------------------------------------------------------- payloads


def _pack_raw(value: bytes) -> bytes:
    # Lua's cmsgpack writes every string as msgpack "str" with the smallest header (str8
    # included), which msgpack-python only does for text, so the header is written here.
    n = len(value)
    if n < 32:
        return bytes([0xA0 | n]) + value
    if n <= 0xFF:
        return b"\xd9" + bytes([n]) + value
    if n <= 0xFFFF:
        return b"\xda" + n.to_bytes(2, "big") + value
    return b"\xdb" + n.to_bytes(4, "big") + value


def encode_notification(publication: Publication, channel: str | None = None) -> bytes:
    """The notification payload of ``publication``, byte for byte what the publish script
    sends: the msgpack array ``[1, offset, epoch, time_ms, data]`` as Lua's cmsgpack packs it,
    with ``channel`` at the end for a channel announced on its route."""
    return b"".join((b"\x95" if channel is None else b"\x96", msgpack.packb(NOTIFICATION_VERSION),
                     msgpack.packb(publication.offset), _pack_raw(publication.epoch.encode()),
                     msgpack.packb(publication.time_ms), _pack_raw(publication.data),
                     b"" if channel is None else _pack_raw(channel.encode())))


def decode_notification(payload: object, max_data_size: int) -> Publication:
    """Parse a notification; raise ValueError for anything that is not one we made."""
    return _publication(_unpack_notification(payload, max_data_size, 5))


def decode_routed_notification(payload: object, max_data_size: int) -> tuple[str, Publication]:
    """Parse a notification of a route: ``(channel, publication)``; raise ValueError for
    anything that is not one we made."""
    value = _unpack_notification(payload, max_data_size, 6)
    channel = value.pop()
    if not isinstance(channel, bytes):
        raise ValueError("routed notification names no channel")
    try:
        name = check_channel(channel.decode())
    except (UnicodeDecodeError, ValueError):
        raise ValueError("routed notification names no valid channel") from None
    return name, _publication(value)


def _unpack_notification(payload: object, max_data_size: int, length: int) -> list[Any]:
    if not isinstance(payload, bytes) or len(payload) > max_data_size + 128 + (length - 5) * 4 * MAX_CHANNEL_LENGTH:
        raise ValueError("notification is not bytes or is too large")
    try:
        value = msgpack.unpackb(payload, raw=True, max_str_len=max_data_size, max_bin_len=max_data_size,
                                max_array_len=length, max_map_len=0, max_ext_len=0)
    except Exception as exc:
        raise ValueError(f"notification is not msgpack: {exc}") from None
    if not (isinstance(value, list) and len(value) == length and value[0] == NOTIFICATION_VERSION):
        raise ValueError("notification is not [1, offset, epoch, time, data]" + ("" if length == 5 else " + channel"))
    return value


def _publication(value: list[Any]) -> Publication:
    _, offset, epoch, time_ms, data = value
    if not (isinstance(offset, int) and 1 <= offset < 10**15 and isinstance(time_ms, int)
            and 0 <= time_ms < 10**15 and isinstance(data, bytes) and isinstance(epoch, bytes)):
        raise ValueError("notification fields have the wrong types")
    epoch_text = epoch.decode("ascii", "replace")
    if not is_valid_epoch(epoch_text):
        raise ValueError("notification epoch is malformed")
    return Publication(offset, data, time_ms, epoch_text)


def decode_entry(entry: object, epoch: str, max_data_size: int) -> Publication | None:
    """One raw stream entry ``[b"<offset>-0", [b"d", data, b"t", ms]]``; None when malformed."""
    if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], bytes)):
        return None
    match = _OFFSET_ID.fullmatch(entry[0])
    fields = entry[1]
    if match is None or not (isinstance(fields, list) and len(fields) == 4 and fields[0] == b"d"
                             and fields[2] == b"t" and isinstance(fields[1], bytes)
                             and isinstance(fields[3], bytes) and _DIGITS.fullmatch(fields[3])):
        return None
    if len(fields[1]) > max_data_size:
        return None
    return Publication(int(match.group(1)), fields[1], int(fields[3]), epoch)


def _meta(epoch: object, top: object, where: str) -> tuple[str, int]:
    """Validate an (epoch, offset) pair read from Redis."""
    if isinstance(epoch, bytes) and isinstance(top, bytes) and _DIGITS.fullmatch(top):
        text = epoch.decode("ascii", "replace")
        if is_valid_epoch(text):
            return text, int(top)
    raise ChannelLogError(f"corrupt channel meta in {where}")


# ------------------------------------------------------------------------- one publish
# The three steps of a publish, shared by RedisChannelLog (redis.asyncio) and the synchronous
# emitter (redis-py): whatever client runs the script, the keys, arguments and checks are these.


def publish_call(prefix: str, channel: str, data: bytes, bounds: ChannelBounds, *,
                 idempotency_key: str | None = None, sharded: bool = False) -> tuple[list[str], list[Any]]:
    """The KEYS and ARGV of one run of :data:`PUBLISH_SCRIPT`; raises ValueError for a bad
    channel name, payload or idempotency key before anything is sent.

    :param prefix: the deployment's key prefix (``redis.key_prefix``).
    :param channel: the channel name.
    :param data: the payload, at most ``bounds.max_data_size`` bytes.
    :param bounds: the limits the script enforces (trim by count and age, dedupe window).
    :param idempotency_key: remembered for ``bounds.dedupe_ttl`` on this channel.
    :param sharded: notify with SPUBLISH (Redis Cluster) instead of PUBLISH.
    """
    check_channel(channel)
    data = check_data(data, bounds)
    keys = channel_keys(prefix, channel)
    script_keys = [keys.stream, keys.meta]
    if idempotency_key is not None:
        script_keys.append(idempotency_key_name(prefix, channel, check_idempotency_key(idempotency_key)))
    args = [data, bounds.max_length, bounds.max_age_ms, bounds.dedupe_ttl_ms, new_epoch(),
            keys.notify, "spublish" if sharded else "publish"]
    if _is_route(keys.notify.encode()):
        args.append(channel)  # announced on its route: the notification says which channel
    return script_keys, args


def publish_error(exc: ResponseError) -> Exception:
    """What a failed publish script raises: :class:`ChannelLogError` for a channel whose
    stored state is not trusted, else the Redis error itself."""
    return ChannelLogError(str(exc)) if "corrupt channel" in str(exc) else exc


def publish_result(reply: object, meta: str) -> PublishResult:
    """The publish script's reply ``[offset, epoch, duplicate]``, validated."""
    if not (isinstance(reply, list) and len(reply) == 3 and isinstance(reply[0], int)
            and reply[0] >= 1 and reply[2] in (0, 1)):
        raise ChannelLogError(f"unexpected publish reply for {meta}")
    epoch = reply[1].decode("ascii", "replace") if isinstance(reply[1], bytes) else ""
    if not is_valid_epoch(epoch):
        raise ChannelLogError(f"corrupt idempotency record or meta for {meta}")
    return PublishResult(StreamPosition(reply[0], epoch), bool(reply[2]))


# ------------------------------------------------------------------------- the log


class NotReplicatedError(RedisError):
    """A publish reached the master but fewer replicas than asked confirmed it in time
    (``replicas_ack``): it is not acknowledged. A retry with the same idempotency key
    publishes nothing twice."""


class RedisChannelLog:
    """The channel log on Redis (or Valkey), shared by every node and by emitters.

    :param client: a ``redis.asyncio.Redis`` or ``RedisCluster`` with ``decode_responses=False``;
        the log does not close it.
    :param prefix: key prefix shared by every node of one deployment.
    :param bounds: the limits.
    :param sharded: notify with SPUBLISH and listen with SSUBSCRIBE (Redis/Valkey ≥ 7), so a
        cluster routes each notification only within the channel's shard; required with a
        ``RedisCluster``.
    :param on_publication: called with (channel, publication) for each notification of a
        subscribed channel, in the order Redis delivers them (offset order per channel).
    :param on_resync: called with a channel after its subscription was re-established on a
        new connection: notifications in between may be lost, so the owner reads the
        channel's history from the last offset it delivered.
    :param replicas_ack: 0: a publish returns once the master has it. n > 0: the publish
        script is followed, on the same connection, by ``WAIT n``; the publish returns only
        when n replicas have it and raises :class:`NotReplicatedError` otherwise, so what was
        acknowledged survives a failover.
    :param replicas_ack_timeout: seconds the ``WAIT`` of ``replicas_ack`` waits.
    :param subscribe_timeout: seconds :meth:`subscribe` waits for Redis to confirm.
    :param ping_interval: a pub/sub connection that carried nothing for one to two of these
        intervals (seconds) is pinged; one still silent an interval later counts as dead and
        is replaced.
    :param subscribe_pace: seconds; subscriptions are written to Redis at most once per pace
        (names asked for sooner after a write wait for the rest of it and share the next).
    """

    def __init__(self, client: aioredis.Redis | RedisCluster, *, prefix: str = "rt",
                 bounds: ChannelBounds = ChannelBounds(), sharded: bool = False,
                 on_publication: OnPublication | None = None, on_resync: OnResync | None = None,
                 subscribe_timeout: float = 10.0, ping_interval: float = 15.0,
                 subscribe_pace: float = WRITE_PACE,
                 replicas_ack: int = 0, replicas_ack_timeout: float = 1.0) -> None:
        if client.get_encoder().decode_responses:
            raise ValueError("the Redis client must use decode_responses=False (data is binary)")
        self.client = client
        self.prefix = check_prefix(prefix)
        self.bounds = bounds
        self.sharded = sharded
        self.on_publication = on_publication
        self.on_resync = on_resync
        self.subscribe_timeout = subscribe_timeout
        self.ping_interval = ping_interval
        if isinstance(replicas_ack, bool) or not isinstance(replicas_ack, int) or replicas_ack < 0:
            raise ValueError(f"replicas_ack must be an integer >= 0, got {replicas_ack!r}")
        if not replicas_ack_timeout > 0:
            raise ValueError(f"replicas_ack_timeout must be > 0, got {replicas_ack_timeout!r}")
        self.replicas_ack = replicas_ack
        self.replicas_ack_timeout = replicas_ack_timeout
        self.cluster = isinstance(client, RedisCluster)
        self._publish_script = client.register_script(PUBLISH_SCRIPT)
        self._history_script = client.register_script(HISTORY_SCRIPT)
        self._trim_script = client.register_script(TRIM_SCRIPT)
        self._renew_script = client.register_script(RENEW_SCRIPT)
        # Publishes of one loop turn go to Redis as one pipeline (redis_batch.py: without
        # redis-py's per-command path, most of what a Redis-mode fan-out cost more than an
        # embedded one); a cluster's are sent alone, through its own routing.
        self._commands = batcher_for(client)
        # A channel's own notification name -> the channel; a route's name -> the channels
        # followed through it (see .routes).
        self._by_notify: dict[bytes, str] = {}
        self._routed: dict[bytes, set[str]] = {}
        # A route's name -> what to call when it is resynced, for the routes held whole
        # (subscribe_route): their notifications reach on_publication for every channel.
        self._held: dict[bytes, Callable[[], None]] = {}
        self._holding: set[bytes] = set()  # routes a subscribe_route is waiting for
        # A route's name -> its channels a subscribe() call is waiting for (a list: two calls
        # may wait for one channel).
        self._waiting: dict[bytes, list[str]] = {}
        self._subscriptions = Subscriptions(client, sharded=sharded, on_message=self._message,
                                            on_resync=self._resync, subscribe_timeout=subscribe_timeout,
                                            ping_interval=ping_interval, write_pace=subscribe_pace,
                                            shared=_is_route)
        self._bad_input = Throttled(log)
        self._failures = Throttled(log)

    def keys(self, channel: str) -> ChannelKeys:
        return channel_keys(self.prefix, channel)

    # ---------------------------------------------------------------- publish and read

    async def publish(self, channel: str, data: bytes, *,
                      idempotency_key: str | None = None) -> PublishResult:
        keys, args = publish_call(self.prefix, channel, data, self.bounds,
                                  idempotency_key=idempotency_key, sharded=self.sharded)
        try:
            if self.replicas_ack:
                reply = await self._publish_replicated(keys, args)
            else:
                reply = await self._commands.script(self._publish_script, keys, args)
        except ResponseError as exc:
            raise publish_error(exc) from None
        return publish_result(reply, keys[1])

    async def _publish_replicated(self, keys: list[str], args: list[Any]) -> object:
        """The publish script, then ``WAIT replicas_ack`` in the same pipeline, so on the same
        connection: WAIT counts the replicas that have this connection's last write.

        On a cluster both commands are sent to the primary that owns the channel's slot; a
        redirection (the slot moved, a failover) means the script did not run there, so the
        topology is read again and the pair sent again, never split over two nodes (a WAIT on
        another connection would count replicas of nothing)."""
        script = self._publish_script
        wait_ms = max(1, int(self.replicas_ack_timeout * 1000))
        for _ in range(5):
            if self.cluster:
                node = await self._owner(keys[0])
                pipe = self.client.pipeline()
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args, target_nodes=node)
                pipe.execute_command("WAIT", self.replicas_ack, wait_ms, target_nodes=node)
                try:
                    reply, acked = await pipe.execute(raise_on_error=False, allow_redirections=False)
                except RedisClusterException:
                    # redis-py resent the pair after a failed send without its target
                    # nodes and refused to route the WAIT: nothing was sent that time.
                    await self.client.nodes_manager.initialize()
                    continue
            else:
                async with self.client.pipeline(transaction=False) as pipe:
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                    pipe.wait(self.replicas_ack, wait_ms)
                    reply, acked = await pipe.execute(raise_on_error=False)
            if isinstance(reply, NoScriptError):  # not run: load it (every primary) and send again
                await self.client.script_load(script.script)
                continue
            if isinstance(reply, (MovedError, AskError, TryAgainError)):  # not run there
                await self.client.nodes_manager.initialize()
                continue
            if isinstance(reply, Exception):
                raise reply
            if isinstance(acked, Exception) or not isinstance(acked, int) or acked < self.replicas_ack:
                raise NotReplicatedError(f"published to {keys[0]} on the master, but "
                                         f"{acked if isinstance(acked, int) else 0} of {self.replicas_ack} "
                                         f"replicas confirmed it within {self.replicas_ack_timeout}s")
            return reply
        raise NotReplicatedError(f"publish to {keys[0]}: the slot kept moving")

    async def _owner(self, key: str) -> Any:
        """The cluster node serving ``key``'s slot now (the topology read first if needed)."""
        if self.client._initialize:
            await self.client.initialize()
        return self.client.get_node_from_key(key)

    async def history(self, channel: str, *, since: StreamPosition | None = None,
                      limit: int) -> HistoryResult:
        check_channel(channel)
        since = check_since(since)
        limit = check_limit(limit, self.bounds)
        keys = self.keys(channel)
        args = (["newest", 0, "", limit] if since is None
                else ["since", since.offset + 1, since.epoch, limit])
        reply = await self._history_script(keys=[keys.stream, keys.meta],
                                           args=[*args, self.bounds.max_age_ms])
        if reply == []:
            return HistoryResult([], EMPTY, since is None or is_recoverable(since, "", 0, 1))
        if not (isinstance(reply, list) and len(reply) == 6 and isinstance(reply[3], list)):
            raise ChannelLogError(f"unexpected history reply for {keys.meta}")
        epoch, top = _meta(reply[0], reply[1], keys.meta)
        first = reply[2] if isinstance(reply[2], int) else top + 1
        position = StreamPosition(top, epoch)
        renewed = ("", 0)
        if isinstance(reply[4], bytes) and isinstance(reply[5], int):
            renewed = (_meta(reply[4], b"%d" % max(reply[5], 0), keys.meta)[0], reply[5])
        if since is not None:
            since = continued(since, epoch, *renewed)
        raw = reply[3] if since is not None else list(reversed(reply[3]))
        publications = [decode_entry(e, epoch, self.bounds.max_data_size) for e in raw]
        valid = [p for p in publications if p is not None]
        # Offsets must run without a hole from where the read started; anything else means
        # an entry was unreadable or the stream was tampered with: not trusted as complete.
        expected = (max(read_start(since, epoch), first) if since is not None
                    else (valid[0].offset if valid else 0))
        intact = len(valid) == len(publications) and all(
            p.offset == expected + i for i, p in enumerate(valid)) and all(p.offset <= top for p in valid)
        if since is not None and 0 < len(raw) < limit:
            intact = intact and valid[-1].offset == top  # a short read must end at the newest
        if len(valid) != len(publications):
            self._bad_input.warning("dropped %d malformed entries of %s", len(publications) - len(valid),
                                    keys.stream)
        if since is None:
            return HistoryResult(valid, position, intact, *renewed)
        return HistoryResult(valid, position, intact and is_recoverable(since, epoch, top, first), *renewed)

    async def position(self, channel: str) -> StreamPosition:
        check_channel(channel)
        meta = _tag(self.prefix, channel) + ":meta"
        epoch, top = await self._commands.command("HMGET", meta, "e", "o")
        if epoch is None:
            return EMPTY
        return _position(epoch, top, meta)

    async def positions(self, channels: Sequence[str]) -> list[StreamPosition]:
        prefix = self.prefix
        metas = [_tag(prefix, check_channel(c)) + ":meta" for c in channels]
        if self.cluster and len(metas) > 1:
            # Sent alone there (DirectCommands): redis-py's cluster pipeline sends each node
            # its commands in one round trip and puts the replies in order.
            async with self.client.pipeline(transaction=False) as pipe:
                for meta in metas:
                    pipe.hmget(meta, ["e", "o"])
                replies = await pipe.execute()
        else:
            # Through the batcher, with every other read of this loop turn (the positions of
            # the channels a connect storm's sockets join): one pipeline, no per-command path.
            pending = [self._commands.command("HMGET", meta, "e", "o") for meta in metas]
            replies, error = [], None
            for reply in pending:  # each awaited, so no error is left unretrieved
                try:
                    replies.append(await reply)
                except Exception as exc:
                    error = error or exc
            if error is not None:
                raise error
        return [EMPTY if epoch is None else _position(epoch, top, meta)
                for meta, (epoch, top) in zip(metas, replies)]

    async def renew_epoch(self, channel: str, epoch: str,
                          delivered: Iterable[tuple[int, int]]) -> StreamPosition:
        check_channel(channel)
        check_epoch(epoch)
        pairs = check_delivered(delivered)
        keys = self.keys(channel)
        try:
            reply = await self._renew_script(keys=[keys.stream, keys.meta],
                                             args=[epoch, new_epoch(), *(n for pair in pairs for n in pair)])
        except ResponseError as exc:
            raise publish_error(exc) from None
        if reply == []:
            return EMPTY
        if not (isinstance(reply, list) and len(reply) == 3 and isinstance(reply[1], int)):
            raise ChannelLogError(f"unexpected renew reply for {keys.meta}")
        return _position(reply[0], b"%d" % reply[1], keys.meta)

    async def trim_expired(self) -> int:
        removed = 0
        async for key in self.client.scan_iter(match=stream_key_pattern(self.prefix), count=500,
                                               _type="STREAM"):
            removed += int(await self._trim_script(keys=[key], args=[self.bounds.max_age_ms]))
        return removed

    # ---------------------------------------------------------------- subscriptions

    async def subscribe(self, channels: Iterable[str]) -> None:
        """Receive notifications for ``channels``; returns once Redis confirmed them all. On
        TimeoutError they stay subscribed, and each gets ``on_resync`` once confirmed."""
        channels = list(channels)
        names = self._notify_names(channels)
        # A route's channels asked for here are read by the caller once this returns: the
        # route's new subscription signals a resync only for its other channels (see _resync).
        waiting = [(n, c) for n, c in zip(names, channels) if n in self._routed]
        for name, channel in waiting:
            self._waiting.setdefault(name, []).append(channel)
        try:
            await self._subscriptions.subscribe(names)
        finally:
            for name, channel in waiting:
                pending = self._waiting[name]
                pending.remove(channel)
                if not pending:
                    del self._waiting[name]

    async def subscribe_route(self, tag: str, on_resync: Callable[[], None]) -> None:
        name = route_name(self.prefix, check_tag(tag)).encode()
        followed = self._routed.setdefault(name, set())
        # While this waits, the route's last other channel may be unsubscribed: the name must
        # stay subscribed (unsubscribe skips it), or the route would be held but silent.
        self._holding.add(name)
        try:
            await self._subscriptions.subscribe([name])
        except BaseException:
            if not followed and self._routed.get(name) is followed:
                del self._routed[name]
            raise
        finally:
            self._holding.discard(name)
        # Held from here: the confirmation awaited above signals no resync to the owner, who
        # has nothing of the route to read yet.
        self._held[name] = on_resync

    def subscribe_new(self, channels: Iterable[str]) -> bool:
        return self._subscriptions.subscribe_new(self._notify_names(channels))

    def _notify_names(self, channels: Iterable[str]) -> list[bytes]:
        """The notification names of ``channels``, remembered for routing their messages: a
        route's name once however many of its channels are followed (a connect storm's new
        sockets name their node's route, subscribed already: nothing to send)."""
        names, prefix, routed = [], self.prefix, self._routed
        for channel in channels:
            name = notify_name(prefix, check_channel(channel)).encode()
            if not _is_route(name):
                self._by_notify[name] = channel
            else:
                followed = routed.get(name)
                if followed is None:
                    followed = routed[name] = set()
                followed.add(channel)
            names.append(name)
        return names

    def subscriptions_written(self) -> asyncio.Future | None:
        return self._subscriptions.written()

    def confirmed(self, channel: str) -> bool:
        return self._subscriptions.confirmed(notify_name(self.prefix, channel).encode())

    async def unsubscribe(self, channels: Iterable[str]) -> None:
        """Stop following ``channels``. A route is unsubscribed with the last of its channels;
        that bookkeeping is done before anything is awaited, so a channel of the route
        followed meanwhile subscribes it again, after this UNSUBSCRIBE (one writer at a time
        per connection, in order)."""
        plain, names = [], []
        for channel in channels:
            if not isinstance(channel, str):
                continue
            name = notify_name(self.prefix, channel).encode()
            followed = self._routed.get(name)
            if followed is None:
                plain.append(name)
                names.append(name)
                continue
            followed.discard(channel)
            if not followed and name not in self._held and name not in self._holding:
                del self._routed[name]
                names.append(name)
        await self._subscriptions.unsubscribe(names)
        for name in plain:
            self._by_notify.pop(name, None)

    def _message(self, name: bytes, payload: bytes) -> None:
        channel = self._by_notify.get(name)
        if self.on_publication is None:
            return
        try:
            if channel is not None:
                publication = decode_notification(payload, self.bounds.max_data_size)
            else:
                followed = self._routed.get(name)
                if followed is None:
                    return
                channel, publication = decode_routed_notification(payload, self.bounds.max_data_size)
                if channel not in followed and name not in self._held:
                    return  # another node's socket on this route (or one no longer here)
        except ValueError as exc:
            self._bad_input.warning("dropped a malformed notification on %r: %s", name, exc)
            return
        try:  # _call's work inline: this runs once per notification
            self.on_publication(channel, publication)
        except Exception:
            self._failures.warning("channel log: a notification callback failed", exc_info=True)

    def _resync(self, name: bytes) -> None:
        channel = self._by_notify.get(name)
        if channel is not None:
            self._call(self.on_resync, channel)
            return
        waiting = self._waiting.get(name, ())
        for channel in list(self._routed.get(name, ())):
            if channel not in waiting:
                self._call(self.on_resync, channel)
        held = self._held.get(name)
        if held is not None:
            self._call(held)

    def _call(self, callback: Any, *args: Any) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            self._failures.warning("channel log: a notification callback failed", exc_info=True)

    async def close(self) -> None:
        await self._subscriptions.close()
        self._by_notify.clear()
        self._routed.clear()
        self._held.clear()


def _position(epoch: object, top: object, where: str) -> StreamPosition:
    text, offset = _meta(epoch, top, where)
    return StreamPosition(offset, text)
