"""The one definition of what a channel publication holds and how channels are named.

The server and every emitter (Django, Celery) publish through these functions, so a
publication written by either is delivered the same way.

Channel names: ``<namespace>`` alone is the namespace-wide channel (an emit without a room);
``<namespace>|<room>`` is the channel of one Socket.IO room — an application room such as
``room:lobby`` in ``/chat``, a user's room ``user:<id>``, or a socket's own room (its sid).

A publication's data is the msgpack map::

    {"e": event, "a": [args...], "x": [sids to skip]?, "o": [other rooms]?, "s": stamp?}

* ``x``: sockets that must not receive it (``skip_sid``).
* ``o``: the other rooms of an emit addressed to several rooms at once: the same event is
  published to each room's channel, and a socket in several of them receives it only from the
  first room of the emit it is in (Socket.IO's "once per socket" rule).
* ``s``: the name of a field of the first argument (a map) that receivers set to the
  publication's offset: ``/chat`` messages carry their ``seq`` this way, so a message is
  written once and its sequence number *is* its channel offset.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import msgpack

__all__ = [
    "Envelope",
    "channel_name",
    "split_channel",
    "decode_envelope",
    "encode_envelope",
    "offset_token",
    "parse_offset_token",
    "channel_tag",
]


@dataclass(frozen=True, slots=True)
class Envelope:
    """One event as published to a channel.

    :param event: the Socket.IO event name.
    :param args: its arguments.
    :param skip: socket ids that must not receive it.
    :param others: the other rooms of a multi-room emit (see the module docstring).
    :param stamp: field of ``args[0]`` receivers set to the offset, or None.
    """

    event: str
    args: list[Any]
    skip: tuple[str, ...] = ()
    others: tuple[str, ...] = ()
    stamp: str | None = None


def channel_name(namespace: str, room: str | None) -> str:
    """The channel of ``room`` in ``namespace`` (None: the namespace-wide channel)."""
    return namespace if room is None else f"{namespace}|{room}"


def split_channel(channel: str) -> tuple[str, str | None]:
    """``(namespace, room)`` of a channel name (room None for the namespace-wide one)."""
    namespace, sep, room = channel.partition("|")
    return namespace, (room if sep else None)


def encode_envelope(envelope: Envelope) -> bytes:
    body: dict[str, Any] = {"e": envelope.event, "a": list(envelope.args)}
    if envelope.skip:
        body["x"] = list(envelope.skip)
    if envelope.others:
        body["o"] = list(envelope.others)
    if envelope.stamp is not None:
        body["s"] = envelope.stamp
    return msgpack.packb(body, use_bin_type=True)


def _strings(value: object) -> tuple[str, ...] | None:
    if value is None:
        return ()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def decode_envelope(data: bytes) -> Envelope | None:
    """Parse a publication's data; anything malformed (it came from storage, or from an
    emitter of another version) is rejected with None, never trusted."""
    try:
        body = msgpack.unpackb(data, raw=False)
    except Exception:
        return None
    if not isinstance(body, dict):
        return None
    event, args, stamp = body.get("e"), body.get("a"), body.get("s")
    skip, others = _strings(body.get("x")), _strings(body.get("o"))
    if not isinstance(event, str) or not isinstance(args, list) or skip is None or others is None:
        return None
    if stamp is not None and not isinstance(stamp, str):
        return None
    return Envelope(event, args, skip, others, stamp)


# ------------------------------------------------------------------ the client's offset string
# socket.io-client keeps the last string argument of each event as its recovery offset and
# presents it when it reconnects. Ours names a channel position: "<offset>~<tag>", where the tag
# is a short digest of the channel name (the same string for every recipient, so one frame
# serves a whole room). The server resolves it against the session's channels.


_TOKEN = re.compile(r"[0-9]{1,15}~[0-9a-f]{8}", re.ASCII)


def channel_tag(channel: str) -> str:
    """An 8-character digest of ``channel``, used in offset strings."""
    return hashlib.blake2b(channel.encode(), digest_size=4).hexdigest()


def offset_token(channel_tag_: str, offset: int) -> str:
    """The offset string a client receives with publication ``offset`` of a channel."""
    return f"{offset}~{channel_tag_}"


def parse_offset_token(value: object) -> tuple[int, str] | None:
    """``(offset, tag)`` of an offset string, or None if ``value`` is not one."""
    if not isinstance(value, str) or _TOKEN.fullmatch(value) is None:
        return None
    offset, _, tag = value.partition("~")
    return int(offset), tag
