"""An emit in python-socketio's write-only call shape, turned into channel publications.

``emit(event, data, to=..., room=..., namespace=..., skip_sid=...)`` means what it means to
python-socketio's ``RedisManager(write_only=True)``:

* ``data``: the event's arguments — a tuple is several arguments, None is none, anything else
  is the one argument.
* ``to`` / ``room`` (the same thing, two names): a Socket.IO room name. Every socket is in the
  room named by its socket id, so a socket id addresses one socket; the server's applications
  also put each socket in ``user:<id>`` (every connection of a user, on every node) and in
  their own rooms (``room:<name>`` in ``/chat``, ``doc:<name>`` in ``/collab``). A list names
  several rooms: each gets the event, and a socket in several of them receives it once. None:
  every socket of the namespace.
* ``skip_sid``: a socket id, or a list of them, that must not receive it.

Each room is one channel (``<namespace>|<room>``, :mod:`.envelope`), so an emit to n rooms is
n publications, each with its own offset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .channel_log import PublishResult
from .envelope import Envelope, channel_name, encode_envelope

# Event names socket.io-client keeps for itself: a server never emits them (the server refuses
# them from clients too, server/realtime.py).
RESERVED_EVENTS = frozenset({"connect", "connect_error", "disconnect", "disconnecting",
                             "newListener", "removeListener"})
MAX_NAMESPACE = 128  # the server cuts longer names: no namespace it serves is longer


@dataclass(frozen=True, slots=True)
class Emit:
    """One checked emit.

    :param namespace: the Socket.IO namespace, e.g. ``/chat``.
    :param rooms: the rooms addressed, in order, without repeats; ``[None]`` for the whole
        namespace.
    :param many: the caller named a list of rooms: the answer is a list too.
    :param envelope: the event, its arguments and the sockets to skip (without ``others``).
    """

    namespace: str
    rooms: tuple[str | None, ...]
    many: bool
    envelope: Envelope

    def publications(self) -> list[tuple[str, bytes]]:
        """``(channel, data)`` of each publication this emit makes, in the rooms' order."""
        others = tuple(r for r in self.rooms if r is not None) if len(self.rooms) > 1 else ()
        data = encode_envelope(Envelope(self.envelope.event, self.envelope.args, self.envelope.skip, others))
        return [(channel_name(self.namespace, room), data) for room in self.rooms]


def event_args(data: Any) -> list[Any]:
    """python-socketio's convention: a tuple is several arguments, None none, else one."""
    if data is None:
        return []
    if isinstance(data, tuple):
        return list(data)
    return [data]


def check_event(event: object) -> str:
    if not isinstance(event, str) or not event:
        raise ValueError(f"event must be a non-empty string, got {event!r:.80}")
    if event in RESERVED_EVENTS:
        raise ValueError(f"{event!r} is reserved by Socket.IO")
    return event


def check_namespace(namespace: object) -> str:
    if not isinstance(namespace, str) or not namespace.startswith("/") or len(namespace) > MAX_NAMESPACE:
        raise ValueError(f"namespace must be a string starting with '/' of at most {MAX_NAMESPACE} "
                         f"characters, got {namespace!r:.80}")
    if "|" in namespace:
        raise ValueError("namespace must not contain '|' (it separates namespace and room in channel names)")
    return namespace


def target_rooms(to: Any, room: Any) -> tuple[tuple[str | None, ...], bool]:
    """The rooms ``to`` / ``room`` name (one of them, or both the same) and whether a list was given."""
    if to is not None and room is not None and to != room:
        raise ValueError("give to= or room= (two names for the same thing), not both")
    target = to if to is not None else room
    if target is None:
        return (None,), False
    if isinstance(target, str):
        names, many = [target], False
    elif isinstance(target, (list, tuple, set, frozenset)):
        names, many = list(target), True
    else:
        raise ValueError(f"to / room must be a room name, a socket id or a list of them, got {type(target).__name__}")
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a room name must be a non-empty string, got {name!r:.80}")
    return tuple(dict.fromkeys(names)), many


def skip_sids(skip_sid: Any) -> tuple[str, ...]:
    if skip_sid is None:
        return ()
    sids = [skip_sid] if isinstance(skip_sid, str) else skip_sid
    if not isinstance(sids, (list, tuple, set, frozenset)) or not all(isinstance(s, str) for s in sids):
        raise ValueError("skip_sid must be a socket id or a list of them")
    return tuple(s for s in sids if s)


def parse_emit(event: Any, data: Any, to: Any, room: Any, namespace: Any, skip_sid: Any,
               callback: Any) -> Emit:
    """Check an emit's arguments (ValueError naming the mistake) and return it."""
    if callback is not None:
        # As python-socketio's write-only manager: an ack needs a server to receive it.
        raise RuntimeError("callbacks can only be issued from the context of a server")
    rooms, many = target_rooms(to, room)
    return Emit(check_namespace(namespace), rooms, many,
                Envelope(check_event(event), event_args(data), skip_sids(skip_sid)))


def answer(result: PublishResult) -> dict[str, Any]:
    """What an emitter returns for one publication: ``{offset, epoch, duplicate}``.

    ``offset`` is the publication's place in its room's channel (1, 2, 3, ... within an epoch),
    ``epoch`` the channel's epoch (a new one means the history before it is gone),
    ``duplicate`` True when the idempotency key was seen and nothing was published now.
    """
    return {"offset": result.position.offset, "epoch": result.position.epoch, "duplicate": result.duplicate}
