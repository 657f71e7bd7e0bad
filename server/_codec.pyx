# cython: language_level=3, boundscheck=False, wraparound=False, binding=True
"""The compiled twin of server/_codec_pure.py: the Socket.IO text-packet codec and the WebSocket
frame builder of the hot path (see server/codec.py, which picks one of the two).

Every function here gives the same result, or raises the same exception type, as its pure twin
for any input; tests/test_codec.py runs both on the same inputs, hostile ones included. Where the
semantics are Python's own (``int()`` of a non-ASCII digit, ``str.isdigit``), this calls Python's
operation instead of reimplementing it, and keeps C only for the common ASCII case.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.object cimport PyObject
from libc.string cimport memcpy

cdef extern from "<sys/socket.h>" nogil:
    ssize_t send(int fd, const void* buf, size_t n, int flags)
    int MSG_DONTWAIT
    int MSG_NOSIGNAL

import orjson
from engineio.packet import Packet as _EioPacket
from socketio.packet import Packet as _LibraryPacket

from .jsonmod import FastJson as _FastJson

# A dict view's layout (its backing dict after the object header), declared here: CPython's own
# _PyDictViewObject moved to an internal header in 3.13. The same two fields in every CPython 3.
cdef extern from *:
    """
    typedef struct { PyObject_HEAD PyObject *dv_dict; } rt_dict_view;
    """
    ctypedef struct rt_dict_view:
        PyObject* dv_dict

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object text, Py_ssize_t* size) except NULL

cdef int EVENT = 2, ACK = 3, BINARY_EVENT = 5, BINARY_ACK = 6
cdef tuple SEPARATORS = (",", ":")
cdef tuple _DIGITS = tuple("0123456789")
# Deeper than this, data_is_binary hands the rest to python-socketio's (recursive, Python-level,
# so it raises RecursionError where the pure twin does instead of overflowing the C stack).
cdef int MAX_C_DEPTH = 64
# FastJson's own calls, made here without its wrapper's frame (the twin test checks they agree).
cdef object _loads = orjson.loads
cdef object _dumps = orjson.dumps
cdef object _NON_STR_KEYS = orjson.OPT_NON_STR_KEYS


cdef bint _is_binary(object data, int depth) except -1:
    cdef object item
    if depth > MAX_C_DEPTH:
        return bool(_LibraryPacket.data_is_binary(data))
    if isinstance(data, (bytes, bytearray)):
        return True
    if isinstance(data, list):
        found = False
        for item in data:  # every item, as the library's reduce() does (its errors included)
            if _is_binary(item, depth + 1):
                found = True
        return found
    if isinstance(data, dict):
        found = False
        for item in data.values():
            if _is_binary(item, depth + 1):
                found = True
        return found
    return False


def data_is_binary(data):
    """Whether ``data`` holds bytes anywhere in its lists and dict values."""
    return _is_binary(data, 0)


def init_packet(self, packet_type=EVENT, data=None, namespace=None, id=None, binary=None, encoded_packet=None):
    """python-socketio's ``Packet.__init__``: the same attributes, the same exceptions."""
    self.packet_type = packet_type
    self.data = data
    self.namespace = namespace
    self.id = id
    if self.uses_binary_events and (binary or (binary is None and _is_binary(data, 0))):
        if packet_type == EVENT:
            self.packet_type = BINARY_EVENT
        elif packet_type == ACK:
            self.packet_type = BINARY_ACK
        else:
            raise ValueError("Packet does not support binary payload.")
    self.attachment_count = 0
    self.attachments = []
    if encoded_packet:
        if type(encoded_packet) is str:
            self.attachment_count = _decode_text(self, <str>encoded_packet) or 0
        else:
            self.attachment_count = self.decode(encoded_packet) or 0


def decode_packet(self, encoded_packet):
    """python-socketio's ``Packet.decode``: set the packet's fields from its encoding and return
    how many binary attachments follow. Text is decoded here; anything else by the library."""
    if type(encoded_packet) is str:
        return _decode_text(self, <str>encoded_packet)
    return _LibraryPacket.decode(self, encoded_packet)


cdef object _decode_text(object self, str ep):
    cdef Py_ssize_t n = len(ep)
    cdef Py_ssize_t pos = 1, dash, sep, q, i, end
    cdef Py_UCS4 c
    cdef long long number
    cdef bint ascii_digits
    attachment_count = 0
    if n == 0:
        self.packet_type = int(ep)  # ValueError, as the library's int(ep[0:1])
    c = ep[0]
    if 48 <= c <= 57:
        self.packet_type = <int>c - 48
    else:
        self.packet_type = int(ep[0:1])  # a non-ASCII decimal digit, or ValueError
    self.namespace = None
    self.data = None
    dash = ep.find("-", 1)
    if dash > 1 and ep[1:dash].isdigit():
        if dash - 1 > 10:
            raise ValueError("too many attachments")
        attachment_count = int(ep[1:dash])
        pos = dash + 1
    if pos < n and ep[pos] == u"/":
        sep = ep.find(",", pos)
        if sep == -1:
            namespace = ep[pos:]
            pos = n
        else:
            namespace = ep[pos:sep]
            pos = sep + 1
        q = namespace.find("?")
        if q != -1:
            namespace = namespace[:q]
        self.namespace = namespace
    if pos < n:
        c = ep[pos]
        if c.isdigit():
            # The library's loop: at most 100 digits, then ValueError if a digit still follows.
            i = 1
            end = n - pos
            ascii_digits = 48 <= c <= 57
            number = <long long>c - 48
            while i < end:
                c = ep[pos + i]
                if not c.isdigit() or i >= 100:
                    break
                if ascii_digits and 48 <= c <= 57:
                    number = number * 10 + (<long long>c - 48)
                else:
                    ascii_digits = False
                i += 1
            if ascii_digits and i <= 18:
                self.id = number
            else:
                self.id = int(ep[pos:pos + i])
            pos += i
            if pos < n and ep[pos].isdigit():
                raise ValueError("id field is too long")
    if pos < n:
        json = self.json
        if json is _FastJson:
            self.data = _loads(ep[pos:])
        else:
            self.data = json.loads(ep[pos:])
    return attachment_count


def encode_packet(self):
    """python-socketio's ``Packet.encode`` for a text packet (a binary one goes to the library)."""
    packet_type = self.packet_type
    if packet_type == BINARY_EVENT or packet_type == BINARY_ACK:
        return _LibraryPacket.encode(self)
    if type(packet_type) is int and 0 <= packet_type <= 9:
        encoded = _DIGITS[packet_type]
    else:
        encoded = str(packet_type)
    namespace = self.namespace
    if namespace is not None and namespace != "/":
        encoded += namespace + ","
    id = self.id
    if id is not None:
        encoded += str(id)
    data = self.data
    if data is not None:
        json = self.json
        if json is _FastJson:
            encoded += (<bytes>_dumps(data, option=_NON_STR_KEYS)).decode("utf-8")
        else:
            encoded += json.dumps(data, separators=SEPARATORS)
    return encoded


def message_packet(text):
    """The Engine.IO MESSAGE packet carrying the encoded Socket.IO packet ``text``, as
    ``engineio.packet.Packet(MESSAGE, data=text)`` builds it (the same attributes), less its
    constructor's checks: ``text`` is a str."""
    if type(text) is not str:
        return _EioPacket(4, data=text)
    pkt = _EioPacket.__new__(_EioPacket)
    pkt.packet_type = 4
    pkt.data = text
    pkt.encode_cache = None
    pkt.binary = False
    return pkt


def text_frame(str text not None):
    """The server-to-client WebSocket text frame of ``text`` (unmasked, so the same bytes for any
    recipient)."""
    cdef Py_ssize_t n
    cdef const char* payload = PyUnicode_AsUTF8AndSize(text, &n)
    cdef Py_ssize_t header = 2 if n < 126 else 4 if n < 65536 else 10
    cdef bytes frame = PyBytes_FromStringAndSize(NULL, header + n)
    cdef unsigned char* out = <unsigned char*>PyBytes_AS_STRING(frame)
    cdef int k
    out[0] = 0x81
    if header == 2:
        out[1] = <unsigned char>n
    elif header == 4:
        out[1] = 126
        out[2] = <unsigned char>(n >> 8)
        out[3] = <unsigned char>(n & 0xFF)
    else:
        out[1] = 127
        for k in range(8):
            out[2 + k] = <unsigned char>((<unsigned long long>n >> (8 * (7 - k))) & 0xFF)
    memcpy(out + header, payload, n)
    return frame


# ------------------------------------------------------------------ WebSocket frames from clients
# The twin of _codec_pure.FrameParser (see its docstring): the same events for the same bytes,
# however they are split; the unmasking is a C loop.

TEXT, BINARY, CLOSE, PING, PONG, FAIL = 1, 2, 8, 9, 10, -1
PROTOCOL_ERROR, INVALID_DATA, TOO_BIG = 1002, 1007, 1009


cdef bytes _unmasked(const unsigned char* src, Py_ssize_t n, const unsigned char* mask):
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
    cdef unsigned char* dst = <unsigned char*>PyBytes_AS_STRING(out)
    cdef Py_ssize_t i
    for i in range(n):
        dst[i] = src[i] ^ mask[i & 3]
    return out


cdef class FrameParser:
    """RFC 6455 client frames to messages (see _codec_pure.FrameParser).

    :param limit: the largest message payload accepted, in bytes.
    """

    cdef public object limit
    cdef long long _limit
    cdef bytearray _buf
    cdef list _parts
    cdef int _opcode
    cdef long long _size
    cdef bint _failed

    def __init__(self, limit):
        self.limit = limit
        self._limit = limit
        self._buf = bytearray()
        self._parts = []
        self._opcode = 0
        self._size = 0
        self._failed = False

    def feed(self, data):
        """The messages and control frames completed by ``data`` (bytes read from the client)."""
        cdef list out = []
        cdef Py_buffer view
        cdef Py_ssize_t end, pos
        cdef bint own = False
        if self._failed:
            return out
        if len(self._buf):
            self._buf += data
            buf = self._buf
            own = True
        else:
            buf = data
        end = len(buf)
        if end == 0:
            return out
        # The buffer itself, not a typed memoryview (whose per-call set-up, a format string
        # parsed, cost as much as the loop); released before the bytearray is resized.
        PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
        try:
            pos = self._frames(<const unsigned char*>view.buf, end, out)
        finally:
            PyBuffer_Release(&view)
        if pos < 0:
            return self._fail(out, <int>-pos)
        if pos:
            if own:
                del self._buf[:pos]
            elif pos < end:
                self._buf += buf[pos:]
        elif not own:
            self._buf += buf
        return out

    cdef Py_ssize_t _frames(self, const unsigned char* p, Py_ssize_t end, list out) except? -2:
        """Parse the frames in ``p[:end]`` into ``out``: how many bytes were used, or minus the
        close code when the stream broke the protocol."""
        cdef Py_ssize_t pos = 0, head, start, k
        cdef unsigned long long n
        cdef int b0, b1, opcode
        cdef bint fin
        cdef bytes payload
        while end - pos >= 2:
            b0 = p[pos]
            b1 = p[pos + 1]
            opcode = b0 & 0x0F
            fin = (b0 & 0x80) != 0
            n = b1 & 0x7F
            if (b0 & 0x70) or not (b1 & 0x80):
                return -PROTOCOL_ERROR
            head = 2
            if n == 126:
                if end - pos < 4:
                    break
                n = (<unsigned long long>p[pos + 2] << 8) | p[pos + 3]
                head = 4
            elif n == 127:
                if end - pos < 10:
                    break
                n = 0
                for k in range(8):
                    n = (n << 8) | p[pos + 2 + k]
                if n >> 63:
                    return -PROTOCOL_ERROR
                head = 10
            if opcode >= 8:
                if opcode > 10 or not fin or n > 125:
                    return -PROTOCOL_ERROR
            elif opcode == 0:
                if not self._opcode:
                    return -PROTOCOL_ERROR
            elif opcode > 2 or self._opcode:
                return -PROTOCOL_ERROR
            if opcode < 8 and <long long>n > self._limit - self._size:
                return -TOO_BIG
            start = pos + head + 4
            if end - start < <Py_ssize_t>n:  # (n < 2**63, and within the limit or 125)
                break
            payload = _unmasked(p + start, <Py_ssize_t>n, p + start - 4)
            pos = start + <Py_ssize_t>n
            if opcode >= 8:
                out.append((opcode, payload))
                continue
            if opcode:
                self._opcode = opcode
            if not fin:
                self._parts.append(payload)
                self._size += <long long>n
                continue
            if self._parts:
                self._parts.append(payload)
                payload = b"".join(self._parts)
                self._parts = []
            opcode = self._opcode
            self._opcode = 0
            self._size = 0
            if opcode == 1:
                try:
                    out.append((1, payload.decode("utf-8")))
                except UnicodeDecodeError:
                    return -INVALID_DATA
            else:
                out.append((2, payload))
        return pos

    cdef list _fail(self, list out, int code):
        self._failed = True
        self._buf = bytearray()
        self._parts = []
        out.append((FAIL, code))
        return out


# ------------------------------------------------------------------ fan-out (server/manager.py)

cdef object _DICT_ITEMS = type({}.items())


def write_frames(object members, dict sockets not None, bytes frame not None, long long max_packets,
                 long long max_bytes, long long limit):
    """Write one fan-out's WebSocket ``frame`` straight to each member's TCP transport where
    nothing can stand in its way; return the members left for the general path (see the pure
    twin's docstring: the same decisions, without a Python frame per member).

    Where the transport holds nothing unsent and its socket is plain TCP (``ws_fd``, see
    server/engine_socket.py's plain_fd), the frame goes to the kernel with one ``send()`` here,
    as the transport's own ``write()`` would first try, and whatever the kernel does not take
    (part of the frame, all of it on EAGAIN or an error) is handed to the transport, which
    queues it or meets the error itself."""
    cdef list rest = []
    cdef Py_ssize_t size = len(frame)
    cdef Py_ssize_t sent
    cdef const char* data = PyBytes_AS_STRING(frame)
    cdef long long room = max_bytes - size
    cdef bint admits = max_packets > 0
    cdef long long buffered
    cdef int fd
    cdef object sid, eio_sid, socket, transport
    cdef object items = members.items()
    # A python-socketio room is a bidict, whose items() is its backing dict's view: walked as
    # that dict, without an item tuple per member.
    cdef dict backing = (<dict>(<rt_dict_view*>items).dv_dict if type(items) is _DICT_ITEMS
                         else dict(items))
    for sid, eio_sid in backing.items():
        socket = sockets.get(eio_sid)
        if socket is None or socket.closed or socket.closing:
            continue
        transport = socket.ws_out
        if (transport is None or not admits or socket.overflowed or socket.upgrading
                or socket.queue._unfinished_tasks or transport.is_closing()):
            rest.append((sid, eio_sid))
            continue
        buffered = transport.get_write_buffer_size()
        if buffered >= limit or (buffered and buffered > room):
            rest.append((sid, eio_sid))
            continue
        if not buffered:
            fd = socket.ws_fd
            if fd >= 0:
                sent = send(fd, data, size, MSG_DONTWAIT | MSG_NOSIGNAL)
                if sent == size:
                    continue
                if sent > 0:
                    transport.write(frame[sent:])
                    continue
        transport.write(frame)
    return rest


# ---------------------------------------------------------------- the client EVENT checks (echo path)

def check_event(pkt, Py_ssize_t max_namespace, object max_ack_id, reserved):
    """server/realtime.py parse_client_packet's checks of a decoded EVENT (type 2) packet ``pkt``:
    None when it passes (its namespace cut to ``max_namespace`` characters), else why not (the
    ProtocolError's message). The same as the pure twin's, in one call."""
    namespace = pkt.namespace
    if namespace is not None:
        if not isinstance(namespace, str):
            return "namespace must be a string"
        if len(<str>namespace) > max_namespace:
            pkt.namespace = (<str>namespace)[:max_namespace]
    ack_id = pkt.id
    if ack_id is not None and (isinstance(ack_id, bool) or not isinstance(ack_id, int)
                               or not 0 <= ack_id <= max_ack_id):
        return "bad ack id"
    data = pkt.data
    if not isinstance(data, list) or not data or not isinstance((<list>data)[0], str):
        return "event payload must be an array starting with the event name"
    if (<list>data)[0] in reserved:
        return f"reserved event name {(<list>data)[0]!r}"
    return None


# ---------------------------------------------------------------- the ack of an event (echo path)

def ack_text(packet_class, namespace, ack_id, data):
    """The encoded ACK packet ``packet_class(ACK, namespace=namespace, id=ack_id, data=data)``,
    or None when it is not a text ACK (see the pure twin): for a class with this module's
    constructor and encoder, the text is built without the packet object."""
    if packet_class.__init__ is not init_packet or packet_class.encode is not encode_packet:
        pkt = packet_class(ACK, namespace=namespace, id=ack_id, data=data)
        if pkt.packet_type != ACK:
            return None
        encoded = pkt.encode()
        return encoded if type(encoded) is str else None
    # init_packet's binary test (binary=None), then encode_packet's text
    if packet_class.uses_binary_events and _is_binary(data, 0):
        return None
    encoded = "3"
    if namespace is not None and namespace != "/":
        encoded += namespace + ","
    if ack_id is not None:
        encoded += str(ack_id)
    if data is not None:
        json = packet_class.json
        if json is _FastJson:
            encoded += (<bytes>_dumps(data, option=_NON_STR_KEYS)).decode("utf-8")
        else:
            encoded += json.dumps(data, separators=SEPARATORS)
    return encoded
