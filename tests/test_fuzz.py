"""Fuzzing the client packet decode path (hypothesis, bounded), in-process and against a server."""

from __future__ import annotations

import asyncio
import random

import aiohttp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from socketio.msgpack_packet import MsgPackPacket
from socketio.packet import Packet

from server.jsonmod import FastJson
from server.realtime import DECODE_ERRORS, MAX_ACK_ID, RESERVED_EVENTS, parse_client_packet

Packet.json = FastJson

# Text shaped like Socket.IO packets (type, attachments, namespace, ack id, JSON) plus noise.
packet_like = st.builds(
    lambda t, att, ns, ack, body: f"{t}{att}{ns}{ack}{body}",
    st.sampled_from(list("0123456789") + ["", "x", "-"]),
    st.sampled_from(["", "1-", "0-", "11-", "99999999999-", "-1-"]),
    st.sampled_from(["", "/chat,", "/", "/a?b=c,", "/\u0000,", "/" + "n" * 300 + ","]),
    st.sampled_from(["", "1", "007", "9" * 30, "-5", "1.5"]),
    st.one_of(st.text(max_size=200), st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False),
                  st.text(max_size=20)),
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=5),
        max_leaves=30).map(lambda v: FastJson.dumps(v))),
)


def check(pkt) -> None:
    assert pkt.packet_type in (0, 1, 2, 3, 5, 6)
    assert pkt.id is None or 0 <= pkt.id <= MAX_ACK_ID
    if pkt.packet_type in (2, 5):
        assert isinstance(pkt.data, list) and pkt.data and isinstance(pkt.data[0], str)
        assert pkt.data[0] not in RESERVED_EVENTS
    if pkt.packet_type == 0:
        assert pkt.data is None or isinstance(pkt.data, dict)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(packet_like, st.text(max_size=300)))
def test_json_decode_accepts_only_valid_packets(data):
    try:
        pkt = parse_client_packet(Packet, data, 10)
    except DECODE_ERRORS:
        return
    check(pkt)


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.builds(
    lambda d: MsgPackPacket(packet_type=d[0], data=d[1], namespace=d[2], id=d[3]).encode(),
    st.tuples(st.integers(-2, 9), st.one_of(st.none(), st.text(), st.lists(st.text(max_size=5)),
                                            st.integers(-2**63, 2**63 - 1)),
              st.one_of(st.none(), st.text(max_size=10)), st.one_of(st.none(), st.integers(-3, 2**60))))))
def test_msgpack_decode_accepts_only_valid_packets(data):
    try:
        pkt = parse_client_packet(MsgPackPacket, data, 10)
    except DECODE_ERRORS:
        return
    check(pkt)


async def test_live_fuzz_leaves_the_server_and_others_unharmed(server, js):
    """Random frames on many raw connections for a bounded time; a bystander keeps working."""
    await js.connect("ok", server.url + "/chat", transports=["websocket"])
    await js.emit("ok", "join", {"room": "calm"})
    rng = random.Random(1234)
    frames = ["40/chat,", "4", "42", "42/chat,[", '42/chat,["message"]', '43/chat,1[]', "451-/chat,[\"a\"]",
              "2", "3", "5", "6", "1", "41/chat,", '40/chat,{"pid":"x","offset":"1-1"}', "4" + "[" * 300]
    sent = 0
    async with aiohttp.ClientSession() as http:
        deadline = asyncio.get_running_loop().time() + 4
        while asyncio.get_running_loop().time() < deadline and sent < 3000:
            try:
                ws = await http.ws_connect(f"{server.url}/socket.io/?EIO=4&transport=websocket")
                await ws.receive(timeout=2)
                for _ in range(rng.randint(1, 8)):
                    choice = rng.random()
                    if choice < 0.5:
                        await ws.send_str(rng.choice(frames))
                    elif choice < 0.8:
                        await ws.send_str("4" + "".join(chr(rng.randint(32, 0x2FF)) for _ in range(rng.randint(0, 40))))
                    else:
                        await ws.send_bytes(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 40))))
                    sent += 1
                await ws.close()
            except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError):
                pass
    assert sent > 50
    assert server.get("/healthz")[0] == 200
    ack = await js.emit("ok", "message", {"room": "calm", "text": "after the storm"})
    assert ack["ok"]
    assert (await js.state("ok"))["connects"] == 1
