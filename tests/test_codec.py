"""The hot path's codec twins (server/codec.py): the compiled server/_codec.pyx and the pure
server/_codec_pure.py (python-socketio's own code) give the same results on the same inputs,
hostile ones included; and after ``make install`` the server runs the compiled one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from socketio import packet as sio_packet

from server import _codec_pure, codec
from server.adapter import ServerAdapter, TextPacket
from server.jsonmod import FastJson
from server.realtime import DECODE_ERRORS, parse_client_packet

ROOT = Path(__file__).resolve().parent.parent

try:
    from server import _codec as _compiled
except ImportError:  # test_compiled_module_is_built says so; the twin tests need it
    _compiled = None

needs_compiled = pytest.mark.skipif(_compiled is None, reason="server._codec is not built (make install)")


def packet_class(impl: Any) -> type:
    """A packet class with ``impl``'s codec, as TextPacket has server/codec.py's."""
    return type(f"Packet_{impl.__name__}", (sio_packet.Packet,), {
        "__init__": impl.init_packet, "decode": impl.decode_packet, "encode": impl.encode_packet,
        "json": FastJson})


PURE = packet_class(_codec_pure)
COMPILED = packet_class(_compiled) if _compiled is not None else None


def outcome(make: Any) -> tuple:
    """What ``make()`` gives: the packet's fields, or the type of the exception it raised."""
    try:
        pkt = make()
    except (*DECODE_ERRORS, UnicodeError, OverflowError) as exc:
        return ("raised", type(exc))
    if isinstance(pkt, (str, bytes, bytearray, list)):
        return ("value", pkt)
    return ("packet", pkt.packet_type, pkt.namespace, pkt.id, pkt.data, pkt.attachment_count, pkt.attachments)


def same_decode(text: Any) -> None:
    """Both twins decode ``text`` alike, bare and through the server's client-packet checks."""
    expected = outcome(lambda: PURE(encoded_packet=text))
    assert outcome(lambda: COMPILED(encoded_packet=text)) == expected, repr(text)
    expected = outcome(lambda: parse_client_packet(PURE, text, 10))
    assert outcome(lambda: parse_client_packet(COMPILED, text, 10)) == expected, repr(text)


# Shaped like what tests/test_hostile.py and tests/test_fuzz.py send, plus what only the decode
# sees: non-ASCII digits where int() and str.isdigit disagree, ids at the 100-digit bound.
HOSTILE = [
    "", "0", "2", "4", "7", "x", "-", "٣", "²", " 2", "\x00", "2\x00", "2-", "2--", "21-", "2-1[]",
    "20-[]", "21-[\"a\"]", "510-/chat,[\"m\"]", "511-/chat,[\"m\"]", "5" + "9" * 11 + "-[]", "5²-[\"a\"]",
    "5٣-[\"a\"]", "5-1-[\"a\"]", "2/", "2/chat", "2/chat,", "2/chat?x=1,[\"a\"]", "2/chat?x,", "2/,[]",
    "2/\x00,[\"a\"]", "2/" + "n" * 300 + ",[\"a\"]", "2/a,b,[\"a\"]", "2/chat,1", "2/chat,007[\"a\"]",
    "3/chat,12[]", "2" + "9" * 18 + "[\"a\"]", "2" + "9" * 19 + "[\"a\"]", "2" + "1" * 100 + "[\"a\"]",
    "2" + "1" * 101 + "[\"a\"]", "2" + "1" * 99 + "[\"a\"]", "2²[\"a\"]", "2٣[\"a\"]", "21٣[\"a\"]", "2١٢[\"a\"]",
    "21²[\"a\"]", "2-5[\"a\"]", "21.5[\"a\"]", "2abc[\"message\"]", "2[\"a-b\"]", "2[\"message\",{]",
    "2[\"connect\"]", "2{}", "2[]", "2[1,2]", "2\"x\"", "2null", "0{\"token\":\"x\"}", "0/chat,\"str\"",
    "4{\"message\":\"x\"}", "6[]", "1/chat,", "2[\"\\ud800\"]", "2[\"a\"" + "]" * 3, "2" + "[" * 300,
    "2/chat," + "[" * 5000 + "]" * 5000, "2[\"e\",\"\u00e9\u4e2d\U0001f600\"]", "2\ud800", "2/\ud800,[\"a\"]",
    "50-[\"m\",{\"_placeholder\":true,\"num\":0}]", "51-[\"m\",{\"_placeholder\":true,\"num\":1}]",
    "61-/chat,3[{\"_placeholder\":true,\"num\":0}]", b"2[\"a\"]", bytearray(b"2[\"a\"]"), b"", b"\xff", 2,
]


@needs_compiled
@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_twins_decode_hostile_input_alike(text):
    same_decode(text)


packet_like = st.builds(
    lambda t, att, ns, ack, body: f"{t}{att}{ns}{ack}{body}",
    st.sampled_from(list("0123456789") + ["", "x", "-", "٣", "²"]),
    st.sampled_from(["", "1-", "0-", "11-", "99999999999-", "-1-", "²-"]),
    st.sampled_from(["", "/chat,", "/", "/a?b=c,", "/\u0000,", "/" + "n" * 300 + ",", "/x"]),
    st.sampled_from(["", "1", "007", "9" * 30, "-5", "1.5", "٣", "1" * 101]),
    st.one_of(st.text(max_size=200), st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False),
                  st.text(max_size=20)),
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=5),
        max_leaves=30).map(FastJson.dumps)),
)


@needs_compiled
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(packet_like, st.text(max_size=300)))
def test_twins_decode_fuzzed_input_alike(text):
    same_decode(text)


json_like = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
              st.text(max_size=20), st.binary(max_size=8)),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20)


@needs_compiled
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(-1, 7) | st.sampled_from([True, 10, 2**70]), json_like,
       st.sampled_from([None, "/", "/chat", "/\u00e9", "/a,b", 7]),
       st.sampled_from([None, 0, 1, 12, 2**53 - 1, 2**70, -3, True]), st.sampled_from([None, True, False]))
def test_twins_build_and_encode_alike(packet_type, data, namespace, ack_id, binary):
    def build(cls):
        return lambda: cls(packet_type, data=data, namespace=namespace, id=ack_id, binary=binary)

    expected = outcome(build(PURE))
    assert outcome(build(COMPILED)) == expected
    if expected[0] == "packet":
        assert outcome(build(COMPILED)().encode) == outcome(build(PURE)().encode)


@needs_compiled
@pytest.mark.parametrize("depth", [1, 50, 200, 100_000])
def test_twins_find_binary_data_at_any_depth(depth):
    for leaf in (b"x", "x"):
        data: Any = leaf
        for level in range(depth):
            data = [data] if level % 2 else {"k": data}
        results = []
        for impl in (_codec_pure, _compiled):
            try:
                results.append(impl.data_is_binary(data))
            except RecursionError:
                results.append(RecursionError)
        assert results[0] == results[1] == (RecursionError if depth > 10_000 else leaf == b"x")


@needs_compiled
@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
@pytest.mark.parametrize("char", ["x", "\u00e9", "\U0001f600"])
def test_twins_build_the_same_frames(size, char):
    text = char * size
    assert _compiled.text_frame(text) == _codec_pure.text_frame(text)


@needs_compiled
def test_twins_refuse_unencodable_text_alike():
    for impl in (_codec_pure, _compiled):
        with pytest.raises(UnicodeEncodeError):
            impl.text_frame("4\ud800")


def test_compiled_module_is_built():
    """``make install`` builds server/_codec.pyx (setup.py), and from the current source: CI must
    not silently run the pure fallback, nor a stale build."""
    assert _compiled is not None, "server._codec is not built: run make install (Cython and gcc)"
    source = ROOT / "server" / "_codec.pyx"
    assert os.path.getmtime(_compiled.__file__) >= source.stat().st_mtime, \
        "server._codec is older than server/_codec.pyx: run make install"


def test_the_server_runs_the_compiled_codec():
    if os.environ.get("REALTIME_PURE_PYTHON", "") not in ("", "0"):
        pytest.skip("REALTIME_PURE_PYTHON is set: this run is of the pure fallback")
    assert codec.COMPILED and codec.implementation is _compiled
    assert TextPacket.__init__ is _compiled.init_packet and TextPacket.encode is _compiled.encode_packet
    from server.engine_socket import text_frame
    assert text_frame is _compiled.text_frame
    from socketio import AsyncManager
    assert ServerAdapter(AsyncManager(), async_mode="aiohttp").packet_class is TextPacket


def test_pure_python_env_var_forces_the_fallback():
    probe = ("from server import codec, _codec_pure; from server.adapter import TextPacket; "
             "assert not codec.COMPILED and codec.implementation is _codec_pure; "
             "assert TextPacket.__init__ is _codec_pure.init_packet; print('pure')")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "REALTIME_PURE_PYTHON": "1"}, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "pure", result.stderr


@needs_compiled
@pytest.mark.parametrize("text", ["", "2/chat,1[\"a\"]", "\u00e9\ud800", b"bytes", bytearray(b"x"), None, 5])
def test_twins_build_the_same_message_packets(text):
    pure, compiled = _codec_pure.message_packet(text), _compiled.message_packet(text)
    assert type(compiled) is type(pure) and vars(compiled) == vars(pure)
    assert outcome(compiled.encode) == outcome(pure.encode)


@needs_compiled
@pytest.mark.parametrize("text", HOSTILE[:60], ids=range(60))
def test_twins_agree_with_another_json_module(text):
    """With FastJson the compiled codec calls orjson itself; with any other json module it calls
    that module's loads and dumps, as the library does."""
    import json

    pure, compiled = (type(cls.__name__ + "_json", (cls,), {"json": json}) for cls in (PURE, COMPILED))
    assert outcome(lambda: compiled(encoded_packet=text)) == outcome(lambda: pure(encoded_packet=text))
    for data in (["é", {"a": [1, 2.5, None]}], {"k": "\u4e2d"}, "x"):
        made = [cls(3, data=data, namespace="/chat", id=7) for cls in (pure, compiled)]
        assert made[1].encode() == made[0].encode()


@needs_compiled
@pytest.mark.parametrize("data", [[{1: "a", 2.5: True, None: 0}], {"k": [b"x"]}, ["\U0001f600", -0.0, 2**63 - 1]])
def test_twins_encode_what_only_the_server_builds_alike(data):
    """Data no client sends but handlers return: non-string keys (FastJson's OPT_NON_STR_KEYS), bytes."""
    built = [cls(3, data=data, namespace="/chat", id=1) for cls in (PURE, COMPILED)]
    assert outcome(built[1].encode) == outcome(built[0].encode)


# ---------------------------------------------------------------- check_event (the echo path's checks)

def event_check_outcome(impl: Any, text: Any) -> tuple | None:
    """``impl``'s check_event on the EVENT packet ``text`` decodes to (None when it is none):
    its answer and the packet's namespace after it."""
    try:
        pkt = PURE(encoded_packet=text)
    except (*DECODE_ERRORS, UnicodeError, OverflowError):
        return None
    if pkt.packet_type != 2:
        return None
    from server.realtime import MAX_ACK_ID, MAX_NAMESPACE_LENGTH, RESERVED_EVENTS
    return impl.check_event(pkt, MAX_NAMESPACE_LENGTH, MAX_ACK_ID, RESERVED_EVENTS), pkt.namespace


EVENTS = [t for t in HOSTILE if isinstance(t, str) and t[:1] == "2"] + [
    '2/chat,1["connect"]', '2/chat,' + str(2**53) + '["a"]', '2/chat,' + str(2**53 - 1) + '["a"]',
    '2/' + 'n' * 129 + ',["a"]', '2/' + 'n' * 128 + ',["a"]', '2[["a"]]', '2[null]', '2["disconnecting"]']


@needs_compiled
@pytest.mark.parametrize("text", EVENTS, ids=range(len(EVENTS)))
def test_twins_check_events_alike(text):
    assert event_check_outcome(_compiled, text) == event_check_outcome(_codec_pure, text), repr(text)


@needs_compiled
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packet_like.map(lambda t: "2" + t[1:] if t else "2"))
def test_twins_check_fuzzed_events_alike(text):
    assert event_check_outcome(_compiled, text) == event_check_outcome(_codec_pure, text), repr(text)


class _Odd:
    """An EVENT packet as another parser could decode it (msgpack: any types in any field)."""

    def __init__(self, namespace: Any, ack_id: Any, data: Any) -> None:
        self.namespace, self.id, self.data = namespace, ack_id, data


@needs_compiled
@pytest.mark.parametrize("fields", [
    (5, None, ["a"]), (b"/chat", None, ["a"]), ("/x", True, ["a"]), ("/x", 1.0, ["a"]), ("/x", -1, ["a"]),
    (None, 2**60, ["a"]), (None, None, ("a",)), (None, None, []), (None, None, [b"a"]), (None, None, "a"),
    (None, 3, ["connect_error"]), ("/" + "x" * 200, 7, ["ok", 1]), (None, None, ["ok"]),
])
def test_twins_check_other_parsers_packets_alike(fields):
    outcomes = []
    for impl in (_compiled, _codec_pure):
        pkt = _Odd(*fields)
        from server.realtime import MAX_ACK_ID, MAX_NAMESPACE_LENGTH, RESERVED_EVENTS
        outcomes.append((impl.check_event(pkt, MAX_NAMESPACE_LENGTH, MAX_ACK_ID, RESERVED_EVENTS), pkt.namespace))
    assert outcomes[0] == outcomes[1]


def test_event_checks_refuse_what_the_protocol_does_not_allow():
    from server.realtime import ProtocolError
    for text in ('2/chat,["connect"]', '2/chat,' + str(2**53) + '["a"]', '2/chat,[]', '2/chat,[1]', '2/chat,{}'):
        with pytest.raises(ProtocolError):
            parse_client_packet(TextPacket, text, 10)
    pkt = parse_client_packet(TextPacket, '2/' + 'n' * 300 + ',5["a",1]', 10)
    assert (pkt.namespace, pkt.id, pkt.data) == ("/" + "n" * 127, 5, ["a", 1])


# ---------------------------------------------------------------- ack_text (the echo path's ack)

def ack_outcome(make: Any) -> tuple:
    """What ``make()`` gives (a text, or None), or the type of the exception it raised."""
    try:
        return ("value", make())
    except (*DECODE_ERRORS, UnicodeError, OverflowError) as exc:
        return ("raised", type(exc))


@needs_compiled
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_like, st.sampled_from([None, "/", "/chat", "/\u00e9", "/a,b"]),
       st.sampled_from([None, 0, 1, 12, 2**53 - 1, 2**70]))
def test_twins_build_acks_alike(data, namespace, ack_id):
    """The compiled ack_text (no packet object) gives what the pure one gives, which is the
    packet's own encoding, or None for a BINARY_ACK; for the server's classes and another json."""
    import json

    other = (type("Pure_json", (PURE,), {"json": json}), type("Compiled_json", (COMPILED,), {"json": json}))
    for cls in (PURE, COMPILED, TextPacket, *other):
        pure = ack_outcome(lambda: _codec_pure.ack_text(cls, namespace, ack_id, [data]))
        assert ack_outcome(lambda: _compiled.ack_text(cls, namespace, ack_id, [data])) == pure
        built = cls(3, namespace=namespace, id=ack_id, data=[data])
        if built.packet_type == 3:
            assert pure == ack_outcome(built.encode)
        else:
            assert pure == ("value", None)


@needs_compiled
def test_ack_text_is_none_for_binary_and_msgpack_acks():
    from socketio import msgpack_packet

    for impl in (_codec_pure, _compiled):
        assert impl.ack_text(TextPacket, "/chat", 1, [{"k": b"x"}]) is None  # a BINARY_ACK
        assert impl.ack_text(msgpack_packet.MsgPackPacket, "/chat", 1, [{"k": 1}]) is None
        assert impl.ack_text(TextPacket, "/chat", 7, [{"k": 1}]) == '3/chat,7[{"k":1}]'
