"""The hot path's packet codec and frame builder: compiled when it can be, pure Python when not.

``make install`` (``pip install -e .``, setup.py) compiles server/_codec.pyx with Cython into the
extension module ``server._codec``; without it (no compiler, a copy of the source tree that was
never built) the same functions come from server/_codec_pure.py, python-socketio's own code.
``REALTIME_PURE_PYTHON=1`` in the environment forces the pure module (read once, at import).

The functions take the packet as ``self``: server/adapter.py binds them as ``TextPacket``'s
methods (``__init__``, ``decode``, ``encode``).
"""

from __future__ import annotations

import os

from . import _codec_pure

implementation = _codec_pure
if os.environ.get("REALTIME_PURE_PYTHON", "").strip().lower() in ("", "0", "false", "no"):
    try:
        from . import _codec as implementation  # type: ignore[no-redef]
    except ImportError:  # not built: the pure twin, same results
        pass

# True when the compiled module is in use (tests/test_codec.py checks it is, after make install).
COMPILED: bool = implementation is not _codec_pure

init_packet = implementation.init_packet
decode_packet = implementation.decode_packet
encode_packet = implementation.encode_packet
data_is_binary = implementation.data_is_binary
message_packet = implementation.message_packet
text_frame = implementation.text_frame
# RFC 6455 client frames to messages (server/websocket.py); its event codes are the same in both.
FrameParser = implementation.FrameParser

# The fan-out's per-recipient frame writes (server/manager.py RealtimeManager._deliver).
write_frames = implementation.write_frames

# The checks of a client's EVENT packet, in one call (server/realtime.py parse_client_packet).
check_event = implementation.check_event

# The text of an event's ACK without the packet object (server/realtime.py _send_ack).
ack_text = implementation.ack_text
