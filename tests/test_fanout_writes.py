"""codec.write_frames, the fan-out's per-member loop: both twins take the same decisions as
RealtimeManager.write's direct path, and leave every other member to it, in order."""

from __future__ import annotations

import asyncio
import itertools
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
    targets = [(f"s{i}", f"e{i}") for i in range(len(members))]
    rest = twin(targets, table, frame, max_packets, max_bytes, LIMIT)
    want = [expected(s, len(frame), max_packets, max_bytes) for s in members]
    assert rest == [t for t, w in zip(targets, want) if w == "rest"]
    for s, w in zip(members, want):
        if s is not None and s.ws_out is not None:
            assert s.ws_out.written == ([frame] if w == "direct" else [])
    assert "direct" in want or max_packets == 0


def test_the_compiled_twin_is_in_use():
    assert codec.COMPILED and codec.write_frames is codec.implementation.write_frames


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
    count = 400  # ~3 MB to each member: past the kernel buffers and the deaf one's 256 KiB bound
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
