"""Rooms as the client manager keeps them: a namespace's ``None`` room (``sid -> eio_sid``) is a
:class:`server.adapter.NamespaceRoom` (a dict with its inverse, where python-socketio has a
bidict), every other room a plain :class:`server.adapter.Room`, and the library's own readers
see both as they see bidicts."""

from __future__ import annotations

import pytest
from bidict import ValueDuplicationError, bidict

from realtime_channels.channel_log import ChannelBounds, MemoryChannelLog
from server.adapter import NamespaceRoom, Room
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
    assert type(rooms[None]) is NamespaceRoom
    assert type(rooms["s1"]) is Room and type(rooms["lobby"]) is Room
    # python-socketio's own readers: participants of a room and of several, both lookups
    assert sorted(m.get_participants("/x", "lobby")) == [("s1", "e1"), ("s2", "e2")]
    assert sorted(m.get_participants("/x", ["s1", "lobby"])) == [("s1", "e1"), ("s2", "e2")]
    assert sorted(m.get_participants("/x", "s2")) == [("s2", "e2")]
    assert m.sid_from_eio_sid("e2", "/x") == "s2" and m.eio_sid_from_sid("s1", "/x") == "e1"
    assert m.is_connected("s1", "/x") and sorted(m.get_rooms("s1", "/x")) == ["lobby", "s1"]
    # The library's refusals still hold: a sid room is no one else's, and an Engine.IO session
    # connects to a namespace once (the None room refuses the duplicate value, as a bidict).
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


def test_a_namespace_room_behaves_as_the_bidict_it_replaces():
    """The same writes to a NamespaceRoom and to python-socketio's bidict leave the same
    forward and inverse maps, and fail alike."""
    ours, theirs = NamespaceRoom(), bidict()
    for room in (ours, theirs):
        room["s1"] = "e1"
        room["s2"] = "e2"
        room["s1"] = "e1"  # the same pair again: nothing changes
        room["s2"] = "e3"  # a key written again: its old value's inverse goes
        with pytest.raises(ValueDuplicationError):
            room["s9"] = "e1"
        room["s4"] = "e4"
        del room["s4"]
        with pytest.raises(KeyError):
            del room["s4"]
        assert room.pop("s9", None) is None
        with pytest.raises(KeyError):
            room.pop("s9")
    assert dict(ours) == dict(theirs._fwdm) == {"s1": "e1", "s2": "e3"}
    assert ours._invm == dict(theirs._invm) == {"e1": "s1", "e3": "s2"}
    assert ours.pop("s2") == theirs.pop("s2") == "e3"
    assert ours._invm == dict(theirs._invm) == {"e1": "s1"} and ours._fwdm is ours
    # Writes that would go around the inverse are refused, not silently wrong.
    for write in (lambda: ours.update(s5="e5"), lambda: ours.setdefault("s5", "e5"), ours.popitem, ours.clear):
        with pytest.raises(TypeError):
            write()
    assert dict(ours) == {"s1": "e1"} and ours._invm == {"e1": "s1"}
    # A copy has an inverse of its own.
    import copy

    copied = copy.copy(ours)
    del copied["s1"]
    assert dict(ours) == {"s1": "e1"} and ours._invm == {"e1": "s1"} and not copied._invm


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
