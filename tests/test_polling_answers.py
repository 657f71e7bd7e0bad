"""The long-poll's common answers written from precomputed bytes (server/http_front.py's
``_answer_ok``, ``payload_bytes``; ``PollingFront.ok_head``) say exactly what the general answer
path says; keep-alive read from the Connection header agrees with llhttp; the query memo of
``PollingFront.route`` stays bounded."""

from __future__ import annotations

import httptools
import pytest
from engineio import packet as eio_packet
from engineio import payload as eio_payload

from server.http_front import _closes, payload_bytes
from server.polling import PollingFront
from tests.test_http_front import closed, connect, joined, request


def raw_answer(sock, buf: bytearray) -> bytes:
    """One answer's raw head (up to its blank line) and body, from ``sock``."""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(65536)
    end = buf.index(b"\r\n\r\n") + 4
    head = bytes(buf[:end])
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(buf) < end + length:
        buf += sock.recv(65536)
    answer = bytes(buf[:end + length])
    del buf[:end + length]
    return answer


@pytest.mark.parametrize("packets", [
    [],
    [eio_packet.Packet(eio_packet.MESSAGE, "2/chat,[\"x\",\"é✓\"]")],
    [eio_packet.Packet(eio_packet.NOOP)],
    [eio_packet.Packet(eio_packet.PING)],
    [eio_packet.Packet(eio_packet.MESSAGE, b"\x00\xffbin")],
    [eio_packet.Packet(eio_packet.MESSAGE, {"a": 1})],
    [eio_packet.Packet(eio_packet.MESSAGE, "a"), eio_packet.Packet(eio_packet.MESSAGE, b"b"),
     eio_packet.Packet(eio_packet.CLOSE)],
])
def test_payload_bytes_is_python_engineios_payload(packets):
    expected = eio_payload.Payload(packets=packets).encode().encode("utf-8")
    assert payload_bytes(packets) == expected


def test_a_cached_packet_encoding_is_kept():
    pkt = eio_packet.Packet(eio_packet.MESSAGE, "first")
    pkt.encode()
    pkt.data = "changed"  # python-engineio answers the cached encoding
    assert payload_bytes([pkt]) == eio_payload.Payload(packets=[pkt]).encode().encode() == b"4first"


class _KeepAlive:
    """llhttp's reading of a request's keep-alive (asked when its head is complete: llhttp
    forgets it once the message is)."""

    def __init__(self) -> None:
        self.connection: str | None = None
        self.parser: httptools.HttpRequestParser | None = None
        self.keep_alive: bool | None = None

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"connection":
            self.connection = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        self.keep_alive = self.parser.should_keep_alive()


@pytest.mark.parametrize("value", ["close", "Close", "keep-alive", "Keep-Alive, Close", "close, upgrade",
                                   "closed", "x-close", " close ", "keep-alive,close", "upgrade"])
def test_close_token_as_llhttp_reads_it(value):
    seen = _KeepAlive()
    seen.parser = httptools.HttpRequestParser(seen)
    seen.parser.feed_data(f"GET / HTTP/1.1\r\nHost: x\r\nConnection: {value}\r\n\r\n".encode())
    assert seen.keep_alive is not None and _closes(seen.connection) == (not seen.keep_alive), value


def test_the_query_memo_is_bounded():
    front = PollingFront(engine=None)
    for n in range(5000):
        assert front._shape(f"EIO=4&transport=polling&sid=s{n}") == (f"s{n}", "4")
    assert front._shape("EIO=4&transport=websocket") is False
    assert front._shape("EIO=4&transport=polling&j=0") is False
    assert len(front._shapes) <= 4096


def _normal(answer: bytes) -> bytes:
    """An answer without its Connection: close line and with its Date blanked."""
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = [b"Date: -" if line.startswith(b"Date: ") else line
             for line in head.split(b"\r\n") if line != b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def test_precomputed_answers_are_the_general_ones(server):
    """A long-poll's payload and a POST's ok, on keep-alive connections (the precomputed head)
    and with ``Connection: keep-alive, Close`` (the general path, which adds that header):
    the same bytes but for Date and Connection."""
    _sid, path = joined(server)
    answers = []
    for n, headers in enumerate(({}, {"Connection": "keep-alive, Close"})):
        get, post = connect(server), connect(server)
        gbuf, pbuf = bytearray(), bytearray()
        get.sendall(request("GET", path, headers=headers))
        post.sendall(request("POST", path, b"40/nop%d," % n, headers=headers))  # an unknown namespace
        ok = raw_answer(post, pbuf)
        payload = raw_answer(get, gbuf)
        answers.append((ok, payload, (b"Connection: close\r\n" in ok, closed(post, 2), closed(get, 2))))
        get.close()
        post.close()
    (ok1, payload1, closing1), (ok2, payload2, closing2) = answers
    assert closing1 == (False, False, False) and closing2 == (True, True, True)
    assert b"Connection: close" in payload2 and b"Connection" not in payload1
    assert _normal(ok1) == _normal(ok2)
    assert ok1.startswith(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n") and b"\r\nContent-Length: 2\r\n" in ok1
    assert ok1.endswith(b"\r\n\r\nok")
    assert _normal(payload1) == _normal(payload2).replace(b"nop1", b"nop0")
    assert payload1.startswith(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=UTF-8\r\n")
    assert payload1.split(b"\r\n\r\n")[1].startswith(b"44/nop0,")
