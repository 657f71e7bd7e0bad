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


def test_session_ids_are_the_librarys_shape_behind_the_node_tag_unique_and_fresh_after_fork():
    import os
    import re

    import engineio

    from realtime_channels.routes import route_of
    from server.realtime import RealtimeEngine

    eio = RealtimeEngine(async_mode="aiohttp")
    eio.node_tag = "Ab3dE9"
    library = engineio.AsyncServer(async_mode="aiohttp")
    ids = [eio.generate_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    shape = re.compile(r"Ab3dE9[A-Za-z0-9_-]{20}")
    assert all(shape.fullmatch(i) for i in ids)
    assert all(route_of(f"/chat|{i}") == "Ab3dE9" for i in ids[:50])
    # python-engineio's own: the same length and alphabet after the tag, and the sequence
    # number in the last four characters counting up as the library's does.
    assert re.fullmatch(r"[A-Za-z0-9_-]{20}", library.generate_id())
    assert [i[-4:] for i in ids[:3]] == ["AAAA", "AAAB", "AAAC"]
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: its next id, then out without pytest's teardown
        os.write(write, eio.generate_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    theirs = os.read(read, 64).decode()
    os.close(read)
    ours = eio.generate_id()
    assert theirs[:-4] != ours[:-4], "the forked child handed out the parent's random bytes"


def test_random_tokens_have_the_secrets_shapes_and_never_repeat():
    import re

    from server import randomness

    hexes = [randomness.token_hex(6) for _ in range(2000)]
    assert all(re.fullmatch(r"[0-9a-f]{12}", h) for h in hexes) and len(set(hexes)) == len(hexes)
    pids = [randomness.token_urlsafe(15) for _ in range(2000)]
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{20}", p) for p in pids) and len(set(pids)) == len(pids)
    # Across refills of the buffer, and a request larger than it.
    chunks = [randomness.token_bytes(1000) for _ in range(20)] + [randomness.token_bytes(10_000)]
    assert [len(c) for c in chunks] == [1000] * 20 + [10_000] and len(set(chunks)) == len(chunks)
