"""The pure-Python twin of server/_codec.pyx: the Socket.IO text-packet codec and the WebSocket
frame builder of the hot path (see server/codec.py, which picks one of the two).

These are python-socketio 5.18.1's own ``Packet.__init__``, ``decode`` and ``encode`` (as methods
of ``server.adapter.TextPacket``), so without the compiled module the server behaves exactly as
with the library; the compiled twin must give the same results (tests/test_codec.py).
"""

from __future__ import annotations

from typing import Any

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


def text_frame(text: str) -> bytes:
    """The server-to-client WebSocket text frame of ``text`` (unmasked, so the same bytes for any
    recipient)."""
    payload = text.encode()
    n = len(payload)
    if n < 126:
        header = bytes((0x81, n))
    elif n < 65536:
        header = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + n.to_bytes(8, "big")
    return header + payload


# ------------------------------------------------------------------ fan-out (server/manager.py)

def write_frames(targets: list, sockets: dict, frame: bytes, max_packets: int, max_bytes: int,
                 limit: int) -> list:
    """Write one fan-out's WebSocket ``frame`` straight to each target's TCP transport where
    nothing can stand in its way; return the targets left for the general path
    (``RealtimeManager.write``), in order.

    A target is written here only when the general path would write it directly and admit it
    without a cut: its session exists, is open, not cut (``overflowed``), has a transport
    (``ws_out``) that is not closing, is not upgrading, has nothing queued or being written,
    its transport holds less than ``limit`` bytes unsent and, unless that is nothing, the
    frame fits in ``max_bytes`` with them (``max_packets`` over 0). A target whose session is
    gone or closing is skipped (the general path sends it nothing either); every other one is
    returned, and the general path decides (queue, cut, drop), exactly as without this.

    :param targets: ``(sid, eio_sid)`` pairs.
    :param sockets: the Engine.IO sessions by ``eio_sid``.
    :param frame: the fan-out as one WebSocket frame, the same bytes for every target.
    :param max_packets: ``Backlog.max_packets``.
    :param max_bytes: ``Backlog.max_bytes``.
    :param limit: ``DIRECT_WRITE_LIMIT``: unsent bytes past which frames are queued instead.
    """
    rest = []
    size = len(frame)
    room = max_bytes - size  # buffered bytes up to which the frame still fits
    admits = max_packets > 0
    get = sockets.get
    for target in targets:
        socket = get(target[1])
        if socket is None or socket.closed or socket.closing:
            continue
        transport = socket.ws_out
        if (transport is None or not admits or socket.overflowed or socket.upgrading
                or socket.queue._unfinished_tasks or transport.is_closing()):
            rest.append(target)
            continue
        buffered = transport.get_write_buffer_size()
        if buffered >= limit or (buffered and buffered > room):
            rest.append(target)
            continue
        transport.write(frame)
    return rest
