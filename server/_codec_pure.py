"""The pure-Python twin of server/_codec.pyx: the Socket.IO text-packet codec and the WebSocket
frame builder of the hot path (see server/codec.py, which picks one of the two).

These are python-socketio 5.18.1's own ``Packet.__init__``, ``decode`` and ``encode`` (as methods
of ``server.adapter.TextPacket``), so without the compiled module the server behaves exactly as
with the library; the compiled twin must give the same results (tests/test_codec.py).
"""

from __future__ import annotations

from typing import Any, Mapping

from engineio import packet as eio_packet
from socketio.packet import Packet as _LibraryPacket


def data_is_binary(data: Any) -> bool:
    """Whether ``data`` holds bytes anywhere in its lists and dict values."""
    return bool(_LibraryPacket.data_is_binary(data))


# python-socketio's own methods themselves (no wrapper: the fallback costs what the library does).
# init_packet(self, packet_type=EVENT, data=None, namespace=None, id=None, binary=None, encoded_packet=None)
init_packet = _LibraryPacket.__init__
# decode_packet(self, encoded_packet) -> the number of binary attachments that follow
decode_packet = _LibraryPacket.decode
# encode_packet(self) -> the text (a list, text then attachments, for a binary packet)
encode_packet = _LibraryPacket.encode


def message_packet(text: Any) -> eio_packet.Packet:
    """The Engine.IO MESSAGE packet carrying the encoded Socket.IO packet ``text``."""
    return eio_packet.Packet(eio_packet.MESSAGE, data=text)


def server_frame(first: int, payload: bytes) -> bytes:
    """A server-to-client WebSocket frame (unmasked, so the same bytes for any recipient): the
    first byte ``first`` (FIN and the opcode), the length, ``payload``."""
    n = len(payload)
    if n < 126:
        header = bytes((first, n))
    elif n < 65536:
        header = bytes((first, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((first, 127)) + n.to_bytes(8, "big")
    return header + payload


def text_frame(text: str) -> bytes:
    """The server-to-client WebSocket text frame of ``text``."""
    return server_frame(0x81, text.encode())


# ------------------------------------------------------------------ WebSocket frames from clients

# What FrameParser.feed yields: (opcode, payload) — a whole message (TEXT: str, BINARY: bytes) or
# a control frame (CLOSE, PING, PONG: bytes) — or (FAIL, close code) once the stream broke the
# protocol (nothing is parsed after that).
TEXT, BINARY, CLOSE, PING, PONG, FAIL = 1, 2, 8, 9, 10, -1
PROTOCOL_ERROR, INVALID_DATA, TOO_BIG = 1002, 1007, 1009


def _unmask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    if not n:
        return b""
    key = int.from_bytes((mask * ((n + 3) >> 2))[:n], "little")
    return (int.from_bytes(payload, "little") ^ key).to_bytes(n, "little")


class FrameParser:
    """RFC 6455 client frames to messages, for a connection that negotiated no extension:
    frames must be masked, RSV bits clear, opcodes continuation/text/binary/close/ping/pong;
    control frames at most 125 bytes and unfragmented (they may come between fragments); a
    message's payload at most ``limit`` bytes (1009, checked from the frame headers, before
    any payload is buffered); a text message valid UTF-8 (1007); anything else fails with 1002.

    :param limit: the largest message payload accepted, in bytes.
    """

    __slots__ = ("limit", "_buf", "_parts", "_opcode", "_size", "_failed")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buf = bytearray()  # the start of a frame not complete yet
        self._parts: list[bytes] = []  # the fragments of a message under way
        self._opcode = 0  # that message's opcode (0: none under way)
        self._size = 0  # its payload bytes so far
        self._failed = False

    def feed(self, data: bytes) -> list[tuple[int, Any]]:
        """The messages and control frames completed by ``data`` (bytes read from the client)."""
        out: list[tuple[int, Any]] = []
        if self._failed:
            return out
        buf: Any = data
        if self._buf:
            self._buf += data
            buf = self._buf
        end = len(buf)
        pos = 0
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            n = b1 & 0x7F
            if b0 & 0x70 or not b1 & 0x80:
                return self._fail(out, PROTOCOL_ERROR)  # an extension's bit, or an unmasked frame
            head = 2
            if n == 126:
                if end - pos < 4:
                    break
                n = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif n == 127:
                if end - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2:pos + 10], "big")
                if n >> 63:
                    return self._fail(out, PROTOCOL_ERROR)
                head = 10
            if opcode >= 8:
                if opcode > 10 or not fin or n > 125:
                    return self._fail(out, PROTOCOL_ERROR)
            elif opcode == 0:
                if not self._opcode:
                    return self._fail(out, PROTOCOL_ERROR)  # a continuation of nothing
            elif opcode > 2 or self._opcode:
                return self._fail(out, PROTOCOL_ERROR)  # reserved, or a new message inside one
            if opcode < 8 and self._size + n > self.limit:
                return self._fail(out, TOO_BIG)
            start = pos + head + 4
            if end - start < n:
                break
            payload = _unmask(bytes(buf[start:start + n]), bytes(buf[start - 4:start]))
            pos = start + n
            if opcode >= 8:
                out.append((opcode, payload))
                continue
            if opcode:
                self._opcode = opcode
            if not fin:
                self._parts.append(payload)
                self._size += n
                continue
            if self._parts:
                self._parts.append(payload)
                payload = b"".join(self._parts)
                self._parts = []
            opcode = self._opcode
            self._opcode = self._size = 0
            if opcode == TEXT:
                try:
                    out.append((TEXT, payload.decode("utf-8")))
                except UnicodeDecodeError:
                    return self._fail(out, INVALID_DATA)
            else:
                out.append((BINARY, payload))
        if pos:
            if buf is self._buf:
                del self._buf[:pos]
            elif pos < end:
                self._buf += buf[pos:]
        elif buf is not self._buf:
            self._buf += buf
        return out

    def _fail(self, out: list[tuple[int, Any]], code: int) -> list[tuple[int, Any]]:
        self._failed = True
        self._buf = bytearray()
        self._parts = []
        out.append((FAIL, code))
        return out


# ------------------------------------------------------------------ fan-out (server/manager.py)

def write_frames(members: Mapping, sockets: dict, frame: bytes, max_packets: int, max_bytes: int,
                 limit: int) -> list:
    """Write one fan-out's WebSocket ``frame`` straight to each member's TCP transport where
    nothing can stand in its way; return the members left for the general path
    (``RealtimeManager.write``), as ``(sid, eio_sid)`` pairs, in order.

    A member is written here only when the general path would write it directly and admit it
    without a cut: its session exists, is open, not cut (``overflowed``), has a transport
    (``ws_out``) that is not closing, is not upgrading, has nothing queued or being written,
    its transport holds less than ``limit`` bytes unsent and, unless that is nothing, the
    frame fits in ``max_bytes`` with them (``max_packets`` over 0). A member whose session is
    gone or closing is skipped (the general path sends it nothing either); every other one is
    returned, and the general path decides (queue, cut, drop), exactly as without this.
    (The compiled twin sends to ``ws_fd`` itself where the transport's ``write`` would: the
    same bytes, in the same order.)

    :param members: ``sid`` -> ``eio_sid``: the room's members (a python-socketio room is a
                    ``bidict``), not changed here.
    :param sockets: the Engine.IO sessions by ``eio_sid``.
    :param frame: the fan-out as one WebSocket frame, the same bytes for every member.
    :param max_packets: ``Backlog.max_packets``.
    :param max_bytes: ``Backlog.max_bytes``.
    :param limit: ``DIRECT_WRITE_LIMIT``: unsent bytes past which frames are queued instead.
    """
    rest = []
    size = len(frame)
    room = max_bytes - size  # buffered bytes up to which the frame still fits
    admits = max_packets > 0
    get = sockets.get
    for member in members.items():
        socket = get(member[1])
        if socket is None or socket.closed or socket.closing:
            continue
        transport = socket.ws_out
        if (transport is None or not admits or socket.overflowed or socket.upgrading
                or socket.queue._unfinished_tasks or transport.is_closing()):
            rest.append(member)
            continue
        buffered = transport.get_write_buffer_size()
        if buffered >= limit or (buffered and buffered > room):
            rest.append(member)
            continue
        transport.write(frame)
    return rest


# ---------------------------------------------------------------- the client EVENT checks (echo path)

def check_event(pkt: Any, max_namespace: int, max_ack_id: int, reserved: Any) -> str | None:
    """server/realtime.py parse_client_packet's checks of a decoded EVENT (type 2) packet ``pkt``:
    None when it passes (its namespace cut to ``max_namespace`` characters), else why not (the
    ProtocolError's message).

    :param max_ack_id: the largest ack id allowed.
    :param reserved: the event names a client may not send.
    """
    namespace = pkt.namespace
    if namespace is not None:
        if not isinstance(namespace, str):
            return "namespace must be a string"
        if len(namespace) > max_namespace:
            pkt.namespace = namespace[:max_namespace]
    ack_id = pkt.id
    if ack_id is not None and (isinstance(ack_id, bool) or not isinstance(ack_id, int)
                               or not 0 <= ack_id <= max_ack_id):
        return "bad ack id"
    data = pkt.data
    if not isinstance(data, list) or not data or not isinstance(data[0], str):
        return "event payload must be an array starting with the event name"
    if data[0] in reserved:
        return f"reserved event name {data[0]!r}"
    return None


# ---------------------------------------------------------------- the ack of an event (echo path)

def ack_text(packet_class: Any, namespace: str | None, ack_id: int, data: Any) -> str | None:
    """The encoded ACK packet ``packet_class(ACK, namespace=namespace, id=ack_id, data=data)``
    (server/realtime.py ``_send_ack``), or None when it is not a text ACK: its data holds bytes
    (a BINARY_ACK), or the serializer encodes to something other than a str (msgpack).

    :param packet_class: the server's packet class (``TextPacket`` for the JSON serializer).
    :param namespace: the event's namespace.
    :param ack_id: the event's ack id.
    :param data: the ack's arguments (a list).
    """
    pkt = packet_class(3, namespace=namespace, id=ack_id, data=data)
    if pkt.packet_type != 3:
        return None
    encoded = pkt.encode()
    return encoded if encoded.__class__ is str else None
