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
