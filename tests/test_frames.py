"""The WebSocket frame parser's twins (server/codec.py's ``FrameParser``): the compiled one in
server/_codec.pyx and the pure one in server/_codec_pure.py give the same messages and the same
close codes for the same bytes, however the bytes are split, hostile streams included."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server import _codec_pure

try:
    from server import _codec as _compiled
except ImportError:
    _compiled = None

IMPLS = [_codec_pure] + ([_compiled] if _compiled is not None else [])
needs_compiled = pytest.mark.skipif(_compiled is None, reason="server._codec is not built (make install)")


def frame(opcode: int, payload: bytes, fin: bool = True, mask: bytes | None = b"\x11\x22\x33\x44",
          rsv: int = 0, length: int | None = None) -> bytes:
    """A client frame (masked unless ``mask`` is None); ``length`` overrides the header's length."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | rsv | opcode
    m = 0x80 if mask is not None else 0
    if n < 126:
        head = bytes((b0, m | n))
    elif n < 65536:
        head = bytes((b0, m | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((b0, m | 127)) + n.to_bytes(8, "big")
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def parse(impl: Any, data: bytes, limit: int = 1000, chunks: int = 1) -> list:
    parser = impl.FrameParser(limit)
    out: list = []
    step = max(1, -(-len(data) // chunks))
    for i in range(0, len(data), step):
        out += parser.feed(data[i:i + step])
    out += parser.feed(b"")
    return out


CASES = {
    "text": (frame(1, "héllo ✓".encode()), [(1, "héllo ✓")]),
    "binary": (frame(2, b"\x00\xff" * 10), [(2, b"\x00\xff" * 10)]),
    "empty text": (frame(1, b""), [(1, "")]),
    "16-bit length": (frame(1, b"x" * 300), [(1, "x" * 300)]),
    "64-bit length": (frame(2, b"y" * 70000), [(2, b"y" * 70000)]),
    "fragments with a ping between": (frame(1, b"ab", fin=False) + frame(9, b"p") + frame(0, b"cd", fin=False)
                                      + frame(10, b"") + frame(0, b"e"), [(9, b"p"), (10, b""), (1, "abcde")]),
    "close": (frame(8, (1000).to_bytes(2, "big") + b"bye"), [(8, b"\x03\xe8bye")]),
    "unmasked": (frame(1, b"hi", mask=None), [(-1, 1002)]),
    "rsv1 (deflate not negotiated)": (frame(1, b"hi", rsv=0x40), [(-1, 1002)]),
    "rsv3": (frame(2, b"hi", rsv=0x10), [(-1, 1002)]),
    "reserved opcode 3": (frame(3, b"hi"), [(-1, 1002)]),
    "reserved control opcode 11": (frame(11, b""), [(-1, 1002)]),
    "continuation of nothing": (frame(0, b"hi"), [(-1, 1002)]),
    "new message inside a fragmented one": (frame(1, b"a", fin=False) + frame(1, b"b"), [(-1, 1002)]),
    "fragmented ping": (frame(9, b"p", fin=False), [(-1, 1002)]),
    "ping over 125 bytes": (frame(9, b"p" * 126), [(-1, 1002)]),
    "text over the limit": (frame(1, b"x" * 1001), [(-1, 1009)]),
    "fragments over the limit": (frame(2, b"x" * 600, fin=False) + frame(0, b"x" * 401), [(-1, 1009)]),
    "at the limit": (frame(2, b"x" * 600, fin=False) + frame(0, b"x" * 400), [(2, b"x" * 1000)]),
    "huge length announced": (frame(2, b"", length=2**40)[:10], [(-1, 1009)]),
    "64-bit length with the top bit": (bytes((0x82, 0xFF)) + (2**63).to_bytes(8, "big") + b"mask", [(-1, 1002)]),
    "invalid UTF-8": (frame(1, b"\xff\xfe"), [(-1, 1007)]),
    "UTF-8 surrogate": (frame(1, "\ud800".encode("utf-8", "surrogatepass")), [(-1, 1007)]),
    "UTF-8 split across fragments": (frame(1, "é".encode()[:1], fin=False) + frame(0, "é".encode()[1:]),
                                     [(1, "é")]),
    "messages before an error are kept": (frame(1, b"ok") + frame(1, b"x", mask=None) + frame(1, b"no"),
                                          [(1, "ok"), (-1, 1002)]),
}


@pytest.mark.parametrize("impl", IMPLS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("chunks", [1, 3, 10_000])
@pytest.mark.parametrize("name", list(CASES))
def test_frames_parse_to_messages_and_close_codes(impl, chunks, name):
    data, expected = CASES[name]
    limit = 100_000 if name == "64-bit length" else 1000
    assert parse(impl, data, limit, chunks) == expected


@pytest.mark.parametrize("impl", IMPLS, ids=lambda m: m.__name__)
def test_nothing_is_parsed_after_a_protocol_error(impl):
    parser = impl.FrameParser(100)
    assert parser.feed(frame(3, b"")) == [(-1, 1002)]
    assert parser.feed(frame(1, b"hi")) == []


@needs_compiled
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from([0, 1, 2, 3, 8, 9, 10, 15]), st.binary(max_size=300), st.booleans(),
                          st.sampled_from([0, 0, 0, 0x40, 0x10]), st.booleans()), max_size=8),
       st.integers(1, 50), st.integers(0, 2000), st.binary(max_size=20))
def test_twins_parse_any_stream_alike(frames, chunks, limit, junk):
    data = b"".join(frame(op, payload, fin=fin, rsv=rsv, mask=os.urandom(4) if masked else None)
                    for op, payload, fin, rsv, masked in frames) + junk
    assert parse(_compiled, data, limit, chunks) == parse(_codec_pure, data, limit, chunks)
