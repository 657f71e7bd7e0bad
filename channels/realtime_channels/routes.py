"""Node routes: the channels of one node's own sockets share one notification name.

A socket's own room (its socket id) and a new guest's ``user:`` room belong to one socket,
or one guest, made on one node. Following each with a subscription of its own cost every
connect a SUBSCRIBE (and its confirmation) and every disconnect an UNSUBSCRIBE, and left Redis
holding one subscription per connection. Instead such a channel *routes* to the node tag its
room starts with: its publications are announced on that route's one notification name (see
:mod:`.redis_channel_log`), which a node subscribes to once for all its sockets. A node with a
local member of a channel routed elsewhere (a socket recovered here keeps its socket id)
subscribes to that route as well, and picks that channel's notifications out of it.

The rule is a pure function of the channel name, so every node and every emitter agrees on it
without asking anyone. Two room shapes route (``<tag>``: the six letters or digits that start
every Engine.IO and Socket.IO id a node makes, see ``server.cluster.new_node_tag``):

* ``<tag>`` + 20 characters of ``[A-Za-z0-9_-]``: a socket id;
* ``user:guest-<tag>`` + 12 lowercase hex digits: the user room of a guest minted by that node.

Any other room name is a channel with a notification name of its own. A room that merely has
one of these shapes without being a socket's is routed all the same: correct, it only shares
its route's messages.
"""

from __future__ import annotations

import re

NODE_TAG_LENGTH = 6
_SOCKET_ROOM = re.compile(r"[A-Za-z0-9]{6}[A-Za-z0-9_-]{20}")
_GUEST_ROOM = re.compile(r"user:guest-([A-Za-z0-9]{6})[0-9a-f]{12}")


_TAG = re.compile(r"[A-Za-z0-9]{6}")


def check_tag(tag: object) -> str:
    """Return ``tag`` if it is a node tag (six letters or digits), else raise ValueError."""
    if not isinstance(tag, str) or _TAG.fullmatch(tag) is None:
        raise ValueError(f"a node tag is six letters or digits, got {tag!r:.40}")
    return tag


def route_of(channel: str) -> str | None:
    """The node tag whose route announces ``channel``'s publications; None when the channel
    has a notification name of its own."""
    _, sep, room = channel.partition("|")
    if not sep:
        return None
    if len(room) == 26 and _SOCKET_ROOM.fullmatch(room) is not None:
        return room[:NODE_TAG_LENGTH]
    if room.startswith("user:guest-"):
        match = _GUEST_ROOM.fullmatch(room)
        if match is not None:
            return match.group(1)
    return None
