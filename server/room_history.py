"""A chat room's history: the ``message`` publications of the room's channel, each with its
``seq`` (its channel offset).

A /chat message is written once, to its room's channel (``/chat|room:<name>``); the channel also
carries the room's other durable events (presence), so ``seq`` increases from message to
message but may skip numbers. It lives in ``server/`` because the server API reads it as well
as ``/chat``; the namespace depends on the server, never the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from realtime_channels.channel_log import ChannelLog, Publication, StreamPosition
from realtime_channels.envelope import channel_name, decode_envelope

NAMESPACE = "/chat"
# History windows read per request at most: a room whose channel holds mostly other events
# (presence) answers with fewer messages rather than reading without end.
MAX_WINDOWS = 8


def room_channel(room: str) -> str:
    """The channel of the /chat room ``room``."""
    return channel_name(NAMESPACE, "room:" + room)


def message_of(publication: Publication) -> dict[str, Any] | None:
    """The chat message published as ``publication``, with its ``seq``; None if it is not one."""
    envelope = decode_envelope(publication.data)
    if envelope is None or envelope.event != "message" or not envelope.args or not isinstance(envelope.args[0], dict):
        return None
    return {**envelope.args[0], "seq": publication.offset}


@dataclass(frozen=True)
class RoomHistory:
    """:param messages: oldest first.
    :param position: the channel's position (``offset`` is the newest seq; ``epoch``).
    :param complete: False when ``after`` could not be continued exactly (trimmed, aged out, or
        another epoch): the messages are then the oldest kept."""

    messages: list[dict[str, Any]]
    position: StreamPosition
    complete: bool


async def read_history(log: ChannelLog, room: str, *, after: int | None = None, before: int | None = None,
                       epoch: str | None = None, limit: int) -> RoomHistory:
    """Messages of ``room``, oldest first.

    :param after: the first ``limit`` messages after this seq, when given.
    :param before: otherwise the newest ``limit`` older than this seq (or the newest ``limit``).
    :param epoch: the epoch ``after`` belongs to (None: the channel's current one).
    Used by the ``history`` and ``resume`` events, the operators' ``room`` and the server API."""
    channel = room_channel(room)
    if after is not None:
        if not epoch:  # none given, or "" (joined before the channel existed): the current one
            epoch = (await log.position(channel)).epoch
        since = StreamPosition(after, epoch)
        messages: list[dict[str, Any]] = []
        complete = True
        for _ in range(MAX_WINDOWS):
            result = await log.history(channel, since=since, limit=limit)
            complete = complete and result.recoverable
            messages += [m for m in map(message_of, result.publications) if m is not None]
            if len(messages) >= limit or len(result.publications) < limit:
                break
            since = result.publications[-1].position
        return RoomHistory(messages[:limit], result.position, complete)
    # Backwards: offsets are contiguous within an epoch, so a window before a seq is arithmetic.
    result = await log.history(channel, limit=0)
    position = result.position
    top = position.offset if before is None else min(before - 1, position.offset)
    found: list[dict[str, Any]] = []
    for _ in range(MAX_WINDOWS):
        if top < 1 or len(found) >= limit:
            break
        start = max(0, top - limit)
        window = await log.history(channel, since=StreamPosition(start, position.epoch), limit=top - start)
        found = [m for m in map(message_of, (p for p in window.publications if p.offset <= top))
                 if m is not None] + found
        if not window.recoverable:
            break  # older ones are gone
        top = start
    return RoomHistory(found[-limit:], position, True)
