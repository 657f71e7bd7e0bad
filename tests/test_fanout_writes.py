"""codec.write_frames, the fan-out's per-member loop: both twins take the same decisions as
RealtimeManager.write's direct path, and leave every other member to it, in order."""

from __future__ import annotations

import asyncio
import itertools
import socket
from typing import Any

import pytest

from server import _codec_pure, codec

TWINS = [_codec_pure.write_frames, codec.implementation.write_frames]
LIMIT = 64 * 1024


class Transport:
    """Stands in an asyncio transport: what was written, what is unsent, whether closing."""

    def __init__(self, buffered: int = 0, closing: bool = False) -> None:
        self.buffered = buffered
        self.closing = closing
        self.written: list[bytes] = []

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: bytes) -> None:
        self.written.append(data)


class Queue:
    def __init__(self, unfinished: int = 0) -> None:
        self._unfinished_tasks = unfinished


class Session:
    def __init__(self, transport: Transport | None = None, **flags: Any) -> None:
        self.ws_out = transport
        self.closed = flags.get("closed", False)
        self.closing = flags.get("closing", False)
        self.overflowed = flags.get("overflowed", False)
        self.upgrading = flags.get("upgrading", False)
        self.queue = Queue(flags.get("unfinished", 0))
        self.ws_fd = flags.get("fd", -1)


def expected(session: Session | None, size: int, max_packets: int, max_bytes: int) -> str:
    """What RealtimeManager.write does with the member: 'skip', 'direct' or 'rest'."""
    if session is None or session.closed or session.closing:
        return "skip"
    t = session.ws_out
    if t is None or session.upgrading or session.queue._unfinished_tasks or t.is_closing():
        return "rest"
    buffered = t.get_write_buffer_size()
    if buffered >= LIMIT or session.overflowed:
        return "rest"
    if max_packets > 0 and (not buffered or buffered + size <= max_bytes):
        return "direct"
    return "rest"  # write() cuts it there


def sessions() -> list[Session | None]:
    out: list[Session | None] = [None, Session(None)]
    for closed, closing, overflowed, upgrading, unfinished, t_closing in itertools.product([False, True], repeat=6):
        for buffered in (0, 1, 900, 1000, LIMIT - 1, LIMIT):
            out.append(Session(Transport(buffered, t_closing), closed=closed, closing=closing,
                               overflowed=overflowed, upgrading=upgrading, unfinished=int(unfinished)))
    return out


@pytest.mark.parametrize("twin", TWINS, ids=["pure", "compiled"])
@pytest.mark.parametrize("max_packets,max_bytes", [(100, 1000), (100, 10**9), (0, 10**9), (1, 0)])
def test_twins_write_where_write_would_and_return_the_rest_in_order(twin, max_packets, max_bytes):
    frame = b"\x81\x05hello" * 10
    members = sessions()
    table = {f"e{i}": s for i, s in enumerate(members) if s is not None}
    room = {f"s{i}": f"e{i}" for i in range(len(members))}
    targets = list(room.items())
    rest = twin(room, table, frame, max_packets, max_bytes, LIMIT)
    want = [expected(s, len(frame), max_packets, max_bytes) for s in members]
    assert rest == [t for t, w in zip(targets, want) if w == "rest"]
    for s, w in zip(members, want):
        if s is not None and s.ws_out is not None:
            assert s.ws_out.written == ([frame] if w == "direct" else [])
    assert "direct" in want or max_packets == 0


@pytest.mark.parametrize("twin", TWINS, ids=["pure", "compiled"])
@pytest.mark.parametrize("kind", ["dict", "bidict", "mapping"])
def test_members_may_be_a_room_bidict_or_any_mapping(twin, kind):
    """A python-socketio room is a bidict (the compiled twin walks its backing dict); any
    other mapping is walked through its items()."""
    from collections import UserDict

    from bidict import bidict

    sessions = {f"e{i}": Session(Transport(buffered=i % 3)) for i in range(10)}
    pairs = {f"s{i}": f"e{i}" for i in range(10)}
    room = {"dict": dict, "bidict": bidict, "mapping": UserDict}[kind](pairs)
    frame = b"\x81\x02hi"
    rest = twin(room, sessions, frame, 100, 1000, 2)  # buffered 2 and up: past the limit
    assert rest == [(f"s{i}", f"e{i}") for i in range(10) if i % 3 == 2]
    assert [len(sessions[f"e{i}"].ws_out.written) for i in range(10)] == [int(i % 3 != 2) for i in range(10)]
    assert dict(room) == pairs  # not changed


def test_the_compiled_twin_is_in_use():
    assert codec.COMPILED and codec.write_frames is codec.implementation.write_frames


# ------------------------------------------------- the compiled twin's own send() to ws_fd

def _pair(sndbuf: int | None = None) -> tuple[socket.socket, socket.socket]:
    """A connected pair of non-blocking sockets: (ours, the peer's)."""
    ours, peer = socket.socketpair()
    if sndbuf is not None:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    ours.setblocking(False)
    peer.setblocking(False)
    return ours, peer


def _drain(peer: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = peer.recv(1 << 20)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


def _fill(ours: socket.socket) -> None:
    """Fill ``ours``' send buffer until the kernel takes nothing more."""
    while True:
        try:
            ours.send(b"\0" * 65536)
        except BlockingIOError:
            return


def _one(session: Session, frame: bytes) -> list:
    return codec.implementation.write_frames({"s": "e"}, {"e": session}, frame, 100, 10**9, LIMIT)


def test_the_compiled_twin_sends_to_the_socket_itself_when_the_transport_holds_nothing():
    ours, peer = _pair()
    with ours, peer:
        t = Transport()
        frame = b"\x81\x05hello"
        assert _one(Session(t, fd=ours.fileno()), frame) == []
        assert _drain(peer) == frame and t.written == []
        # something unsent in the transport: the frame goes behind it, through the transport
        t.buffered = 10
        assert _one(Session(t, fd=ours.fileno()), frame) == []
        assert t.written == [frame] and _drain(peer) == b""


def test_what_the_kernel_does_not_take_goes_to_the_transport_in_order():
    ours, peer = _pair(sndbuf=4096)
    with ours, peer:
        _fill(ours)
        filled = _drain(peer)
        # room for part of a frame: the kernel takes a head, the transport gets the tail
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        frame = bytes(range(256)) * 1024
        t = Transport()
        assert _one(Session(t, fd=ours.fileno()), frame) == []
        head = _drain(peer)
        assert 0 < len(head) < len(frame), len(head)
        assert t.written == [frame[len(head):]]
        assert len(filled) > 0


def test_a_full_socket_or_a_failed_send_leaves_the_whole_frame_to_the_transport():
    ours, peer = _pair(sndbuf=4096)
    with ours, peer:
        _fill(ours)  # EAGAIN: the kernel takes nothing
        t = Transport()
        frame = b"\x81\x05hello"
        assert _one(Session(t, fd=ours.fileno()), frame) == []
        assert t.written == [frame]
    ours, peer = _pair()
    with ours:
        peer.close()  # EPIPE: the transport meets the error itself (and closes)
        t = Transport()
        assert _one(Session(t, fd=ours.fileno()), frame) == []
        assert t.written == [frame]


async def test_plain_fd_is_the_tcp_socket_and_none_for_tls_or_no_transport():
    from server.engine_socket import plain_fd

    class Tls(Transport):
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return object() if name == "sslcontext" else default

    assert plain_fd(None) == -1
    assert plain_fd(Tls()) == -1
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    async with server:
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        try:
            fd = plain_fd(writer.transport)
            assert fd == writer.transport.get_extra_info("socket").fileno() >= 0
        finally:
            writer.close()


# ---------------------------------------------------------------------- a real server's fan-out

@pytest.mark.parametrize("store", ["embedded", "redis"])
async def test_a_deaf_member_is_cut_and_the_others_get_every_fanout_in_order(servers, js, store, request):
    """A room member that stops reading is cut at the byte bound (the compiled loop hands it to
    the general path once its transport backs up); the reading members get every fan-out, in
    offset order, before, during and after the cut. In the Redis mode each fan-out comes back
    through the channel's notification and takes the same compiled loop."""
    from test_bounds import cut_off, deaf_client, ws_frame
    from test_delivery import metric
    from test_hostile import _cfg

    env = {"EVENTS_PER_SECOND": "100000", "EVENT_BURST": "100000", "BENCH_NAMESPACE": "1"}
    if store == "redis":
        env["REDIS_URL"] = request.getfixturevalue("redis_url")
    srv = servers(env=env, args=["--config", _cfg("[limits]\nsend_queue_max_bytes = 262144\n")])
    for name in ("a", "b"):
        await js.connect(name, srv.url + "/bench", transports=["websocket"])
        assert await js.emit(name, "join", "r") is True
    deaf = deaf_client(srv, "/bench")
    deaf.sendall(ws_frame('42/bench,1["join","r"]'))
    await asyncio.sleep(0.5)  # joined
    text = "x" * 8000
    count = 800  # ~6.4 MB to each member: past the kernel buffers (a loopback send buffer grows to tcp_wmem's 4 MiB) and the deaf one's 256 KiB bound
    for start in range(0, count, 50):  # in bursts the readers keep up with
        results = await js.call("emitMany", name="a", event="fanout",
                                argsList=[[{"room": "r", "payload": {"i": i, "text": text}}]
                                          for i in range(start, start + 50)])
        assert results["results"] == [True] * 50, results["results"][:3]
    for name in ("a", "b"):
        got = await js.wait(name, "msg", count, timeout=20000)
        assert [e["args"][0]["i"] for e in got] == list(range(count))
        offsets = [int(e["args"][-1].split("~")[0]) for e in got]
        assert offsets == sorted(offsets) and len(set(offsets)) == count
    assert cut_off(deaf)
    assert metric(srv, "rt_slow_consumers_total") >= 1
