"""Reading a Yjs update (v1 encoding) far enough to know whose operations it carries.

pycrdt (yrs) and yjs disagree on numbers JavaScript cannot hold exactly: yrs keeps the low
53 bits of a client id and the low 32 bits of a clock, yjs keeps the nearest float, so an
update with client id 2**53 is one document on the server (and for late joiners, who get the
server's merged state) and another in the browsers that received it live. This module reads
the raw numbers, so such an update is refused before either library sees it.

The layout (yjs ``readClientsStructRefs`` / ``readDeleteSet``): the number of clients, then per
client the number of structs, the client id, the first clock and the structs (GC, Skip, or an
Item with optional origin ids, parent and content); then the delete set: per client its id and
(clock, length) ranges.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_CLIENT_ID = 2**53 - 1  # the largest integer a JavaScript number holds exactly
MAX_CLOCK = 2**32 - 1      # yrs keeps clocks in 32 bits
MAX_NESTING = 64           # nested arrays/objects in one "any" value


class UpdateError(ValueError):
    """Not a well-formed Yjs v1 update."""


class ClientIdError(UpdateError):
    """A client id outside the range every Yjs implementation reads the same way."""


@dataclass
class UpdateInfo:
    """What an update writes.

    :param writes: client id -> the clock after its last struct, for every client whose
        structs the update carries (Skip-only clients write nothing and are left out).
    :param deletes: whether the delete set is non-empty.
    """

    writes: dict[int, int] = field(default_factory=dict)
    deletes: bool = False


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise UpdateError("unexpected end of update")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def uint(self) -> int:
        value, shift = 0, 0
        while True:
            b = self.byte()
            value |= (b & 0x7F) << shift
            if b < 0x80:
                return value
            shift += 7
            if shift > 70:  # far beyond any id or clock; lib0 refuses these too
                raise UpdateError("integer too large")

    def skip(self, count: int) -> bytes:
        if count > len(self.data) - self.pos:
            raise UpdateError("unexpected end of update")
        chunk = self.data[self.pos:self.pos + count]
        self.pos += count
        return chunk

    def buffer(self) -> bytes:
        return self.skip(self.uint())

    def client(self) -> int:
        client = self.uint()
        if client > MAX_CLIENT_ID:
            raise ClientIdError(f"client id {client} is above 2^53 - 1")
        return client

    def clock(self) -> int:
        clock = self.uint()
        if clock > MAX_CLOCK:
            raise UpdateError(f"clock {clock} is above 2^32 - 1")
        return clock

    def utf16_length(self) -> int:
        """A string's length as yjs counts it (UTF-16 code units, after TextDecoder)."""
        text = self.buffer().decode("utf-8", errors="replace")
        return len(text.encode("utf-16-le", errors="surrogatepass")) // 2

    def any(self, depth: int = 0) -> None:
        if depth > MAX_NESTING:
            raise UpdateError("value nested too deeply")
        kind = self.byte()  # lib0 writes 127 - type; the cases below are these bytes
        if kind in (127, 126, 121, 120):  # undefined, null, false, true
            return
        if kind == 125:  # varint: sign in the first byte, then 7 bits a byte
            while self.byte() & 0x80:
                pass
        elif kind == 124:
            self.skip(4)
        elif kind in (123, 122):
            self.skip(8)
        elif kind in (119, 116):  # string, bytes
            self.buffer()
        elif kind == 118:
            for _ in range(self.uint()):
                self.buffer()
                self.any(depth + 1)
        elif kind == 117:
            for _ in range(self.uint()):
                self.any(depth + 1)
        else:
            raise UpdateError(f"unknown value type {kind}")

    def content(self, kind: int) -> int:
        """Skip an Item's content; returns how many clocks it takes."""
        if kind == 1:  # deleted
            return self.uint()
        if kind == 2:  # JSON strings
            count = self.uint()
            for _ in range(count):
                self.buffer()
            return count
        if kind == 3 or kind == 5:  # binary, embed
            self.buffer()
            return 1
        if kind == 4:
            return self.utf16_length()
        if kind == 6:  # format: key, value
            self.buffer()
            self.buffer()
            return 1
        if kind == 7:  # a nested type; XmlElement and XmlHook carry a name
            ref = self.uint()
            if ref in (3, 5):
                self.buffer()
            elif ref > 6:
                raise UpdateError(f"unknown type {ref}")
            return 1
        if kind == 8:
            count = self.uint()
            for _ in range(count):
                self.any()
            return count
        if kind == 9:  # subdocument: guid, options
            self.buffer()
            self.any()
            return 1
        raise UpdateError(f"unknown content {kind}")

    def id(self) -> None:
        self.client()
        self.clock()


def read_update(data: bytes) -> UpdateInfo:
    """The clients an update writes (and up to which clock), checking every client id and
    clock in it is in range.

    :param data: a Yjs update, v1 encoding.
    :raises ClientIdError: a client id is 2^53 or more (anywhere: structs, origins, parents,
        deletions).
    :raises UpdateError: anything else malformed, including clocks of 2^32 or more.
    """
    reader = _Reader(bytes(data))
    info = UpdateInfo()
    seen: set[int] = set()
    for _ in range(reader.uint()):
        count = reader.uint()
        client = reader.client()
        if client in seen:
            # yjs keeps the last group of a client, yrs may keep both: refuse the ambiguity.
            raise UpdateError(f"client {client} appears twice")
        seen.add(client)
        clock = reader.clock()
        writes = False
        for _ in range(count):
            info_byte = reader.byte()
            kind = info_byte & 0x1F
            if kind == 0 or kind == 10:  # GC, Skip
                length = reader.uint()
                writes = writes or kind == 0
            else:
                if info_byte & 0x80:
                    reader.id()  # origin
                if info_byte & 0x40:
                    reader.id()  # right origin
                if info_byte & 0xC0 == 0:
                    if reader.uint() == 1:
                        reader.buffer()  # a root type's name
                    else:
                        reader.id()  # the parent item
                    if info_byte & 0x20:
                        reader.buffer()  # the key in a map
                length = reader.content(kind)
                writes = True
            clock += length
            if clock > MAX_CLOCK + 1:
                raise UpdateError(f"clock {clock} is above 2^32")
        if writes:
            info.writes[client] = clock
    for _ in range(reader.uint()):
        reader.client()
        ranges = reader.uint()
        for _ in range(ranges):
            reader.clock()
            reader.clock()
        info.deletes = info.deletes or ranges > 0
    if reader.pos != len(reader.data):
        raise UpdateError("bytes after the end of the update")
    return info


def read_state_vector(data: bytes) -> dict[int, int]:
    """A Yjs state vector (``pycrdt.get_state``): client id -> next clock."""
    reader = _Reader(bytes(data))
    return {reader.uint(): reader.uint() for _ in range(reader.uint())}

