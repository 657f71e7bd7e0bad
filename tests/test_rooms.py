"""Rooms as the client manager keeps them: a namespace's ``None`` room (``sid -> eio_sid``) is
python-socketio's bidict, every other room a plain :class:`server.adapter.Room`, and the
library's own readers see both as they see bidicts."""

from __future__ import annotations

import pytest
from bidict import ValueDuplicationError, bidict

from realtime_channels.channel_log import ChannelBounds, MemoryChannelLog
from server.adapter import Room
from server.manager import RealtimeManager
from server.metrics import Metrics


def manager() -> RealtimeManager:
    return RealtimeManager(lambda on_publication, on_resync: MemoryChannelLog(
        ChannelBounds(), on_publication=on_publication, on_resync=on_resync), [], Metrics())


def test_rooms_but_the_none_room_are_plain_and_read_by_the_library_as_bidicts():
    m = manager()
    for sid, eio_sid in (("s1", "e1"), ("s2", "e2")):
        m.add_to_room(sid, "/x", None, eio_sid=eio_sid)
        m.add_to_room(sid, "/x", sid, eio_sid=eio_sid)
        m.add_to_room(sid, "/x", "lobby")
    rooms = m.rooms["/x"]
    assert type(rooms[None]) is bidict
    assert type(rooms["s1"]) is Room and type(rooms["lobby"]) is Room
    # python-socketio's own readers: participants of a room and of several, both lookups
    assert sorted(m.get_participants("/x", "lobby")) == [("s1", "e1"), ("s2", "e2")]
    assert sorted(m.get_participants("/x", ["s1", "lobby"])) == [("s1", "e1"), ("s2", "e2")]
    assert sorted(m.get_participants("/x", "s2")) == [("s2", "e2")]
    assert m.sid_from_eio_sid("e2", "/x") == "s2" and m.eio_sid_from_sid("s1", "/x") == "e1"
    assert m.is_connected("s1", "/x") and sorted(m.get_rooms("s1", "/x")) == ["lobby", "s1"]
    # The library's refusals still hold: a sid room is no one else's, and an Engine.IO session
    # connects to a namespace once (the None room's bidict refuses the duplicate value).
    with pytest.raises(ValueError, match="sid room"):
        m.add_to_room("s2", "/x", "s1")
    with pytest.raises(ValueDuplicationError):
        m.add_to_room("s3", "/x", None, eio_sid="e1")
    with pytest.raises(ValueError, match="not connected"):
        m.add_to_room("s9", "/other", "lobby")
    m.remove_from_room("s1", "/x", "lobby")
    assert sorted(m.get_participants("/x", "lobby")) == [("s2", "e2")]
    m.drop_socket("s2", "/x")
    assert "lobby" not in rooms and "s2" not in rooms and "s2" not in rooms[None]
