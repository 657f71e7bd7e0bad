"""A chat room's history: its messages in the event log, each with its ``seq`` (its offset).

It lives in ``server/`` because the server API reads it as well as ``/chat``; the namespace
depends on the server, never the other way round. With per-room channels (issue 13) this
becomes a channel's history.
"""

from __future__ import annotations

from typing import Any

import msgpack

from .event_log import Entry, EventLog


def history_stream(room: str) -> str:
    """The event-log stream holding the messages of the /chat room ``room``."""
    return f"/chat#room:{room}"


def message_of(entry: Entry) -> dict[str, Any] | None:
    """The chat message logged as ``entry``, with its ``seq``; None if it is not one."""
    try:
        message = msgpack.unpackb(entry.data)
    except Exception:
        return None
    if not isinstance(message, dict):
        return None
    message["seq"] = entry.offset
    return message


async def read_history(event_log: EventLog, room: str, after: str | None, before: str | None,
                       limit: int) -> list[dict]:
    """Messages of ``room``, oldest first, each with its ``seq``.

    :param after: the first ``limit`` messages after this seq, when given.
    :param before: otherwise the newest ``limit`` older than this seq (or the newest ``limit``).
    Used by the ``history`` event, the operators' ``room`` and the server API."""
    stream = history_stream(room)
    entries = await (event_log.read(stream, after, limit) if after is not None else
                     event_log.history(stream, limit, before))
    return [m for m in map(message_of, entries) if m is not None]
