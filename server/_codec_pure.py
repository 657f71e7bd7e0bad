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

EVENT, ACK = 2, 3


def data_is_binary(data: Any) -> bool:
    """Whether ``data`` holds bytes anywhere in its lists and dict values."""
    return bool(_LibraryPacket.data_is_binary(data))


def init_packet(self: Any, packet_type: Any = EVENT, data: Any = None, namespace: Any = None, id: Any = None,
                binary: Any = None, encoded_packet: Any = None) -> None:
    """python-socketio's ``Packet.__init__``.

    :param self: the packet being built (a ``TextPacket``).
    :param encoded_packet: the packet as received; when given, it sets every other field.
    """
    _LibraryPacket.__init__(self, packet_type, data, namespace, id, binary, encoded_packet)


def decode_packet(self: Any, encoded_packet: Any) -> int:
    """python-socketio's ``Packet.decode``: set the packet's fields from ``encoded_packet`` and
    return how many binary attachments follow."""
    return _LibraryPacket.decode(self, encoded_packet)


def encode_packet(self: Any) -> Any:
    """python-socketio's ``Packet.encode``: the text encoding (a list, text then attachments,
    for a binary packet)."""
    return _LibraryPacket.encode(self)


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
