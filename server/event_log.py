"""EventLog: an append-only, bounded history per stream, with offsets and an epoch.

Modelled on Centrifuge's history: every entry gets an *offset* that increases within its
stream (Redis stream IDs, ``"<ms>-<seq>"``, in both implementations), and every stream has
an *epoch* that changes whenever its history is lost (Redis flushed, memory node restarted).
A reader that presents an offset from another epoch, or one older than what is retained,
is told that recovery is impossible instead of silently receiving a partial replay.

Bounds: ``max_length`` entries per stream (on append) and ``max_age`` (by :meth:`sweep`, on a
timer, for every stream); a stream with no new entry for ``idle_ttl`` is forgotten. Reading a
stream that has no entries stores nothing: its position is ``"0-0"`` and its epoch the one it
will have when first written. (A client holding the start position of a stream forgotten and
then written again is the one case not told: keep ``idle_ttl`` long.)

Entries are opaque bytes: the delivery layer decides their encoding.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

ZERO = "0-0"


def parse_offset(offset: str) -> tuple[int, int]:
    """Split ``"<ms>-<seq>"`` into integers; raise ValueError for anything else."""
    if not isinstance(offset, str) or len(offset) > 41:
        raise ValueError("offset must be a string like '1700000000000-0'")
    ms, sep, seq = offset.partition("-")
    if not sep or not ms.isdigit() or not seq.isdigit():
        raise ValueError(f"malformed offset {offset!r}")
    return int(ms), int(seq)


def is_offset(value: object) -> bool:
    try:
        parse_offset(value)  # type: ignore[arg-type]
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Entry:
    offset: str
    data: bytes


@dataclass(frozen=True)
class StreamPosition:
    """Where a stream stands: the offset of its newest entry and its epoch."""

    offset: str
    epoch: str


class EventLog(Protocol):
    """Bounded per-stream history. One memory and one Redis implementation, same tests."""

    async def append(self, stream: str, data: bytes) -> str:
        """Store ``data`` at the end of ``stream`` and return its offset."""

    async def read(self, stream: str, after: str, limit: int = 1000) -> list[Entry]:
        """Entries with an offset greater than ``after``, oldest first, at most ``limit``."""

    async def history(self, stream: str, limit: int, before: str | None = None) -> list[Entry]:
        """The newest ``limit`` entries (older than ``before`` if given), oldest first."""

    async def position(self, stream: str) -> StreamPosition:
        """The newest offset (``"0-0"`` when empty) and the epoch."""

    async def epoch(self, stream: str) -> str:
        """The stream's epoch: changes whenever its history is lost."""

    async def covers(self, stream: str, offset: str) -> bool:
        """True when every entry after ``offset`` is still retained (nothing trimmed past it)."""

    async def sweep(self) -> None:
        """Drop entries older than the age limit from every stream (length is bounded on
        append), and forget streams idle for longer than ``idle_ttl``."""

    async def follow(self, positions: dict[str, str], timeout: float) -> list[tuple[str, Entry]]:
        """Wait up to ``timeout`` seconds for entries after ``positions`` (stream -> offset)."""

    async def close(self) -> None:
        """Release connections."""


# ------------------------------------------------------------------------ memory


class _MemoryStream:
    __slots__ = ("entries", "last", "trimmed_through", "written")

    def __init__(self) -> None:
        self.entries: deque[Entry] = deque()
        self.last = (0, 0)
        self.trimmed_through = (0, 0)
        self.written = 0.0  # time.time() of the last append


class MemoryEventLog:
    """In-process log: one node, lost on restart (a restart changes every epoch).

    :param max_length: entries kept per stream; older ones are dropped on append.
    :param max_age: seconds an entry is kept; older ones are dropped by :meth:`sweep`.
    :param idle_ttl: seconds a stream is remembered after its last append (at least ``max_age``).
    """

    def __init__(self, max_length: int = 10_000, max_age: float = 3600.0, idle_ttl: float = 86400.0) -> None:
        self.max_length = max_length
        self.max_age = max_age
        self.idle_ttl = max(idle_ttl, max_age)
        # One epoch for every stream: they are all lost together, when the process ends.
        self._epoch = secrets.token_hex(8)
        self._streams: dict[str, _MemoryStream] = {}
        self._changed = asyncio.Event()

    def size(self) -> int:
        """Streams held."""
        return len(self._streams)

    def append_nowait(self, stream: str, data: bytes) -> str:
        """Synchronous append, for callers that must not yield between append and send."""
        s = self._streams.get(stream)
        if s is None:
            s = self._streams[stream] = _MemoryStream()
        now = int(time.time() * 1000)
        s.written = now / 1000
        ms, seq = s.last
        s.last = (now, 0) if now > ms else (ms, seq + 1)
        offset = f"{s.last[0]}-{s.last[1]}"
        s.entries.append(Entry(offset, data))
        while len(s.entries) > self.max_length:
            s.trimmed_through = parse_offset(s.entries.popleft().offset)
        self._changed.set()
        return offset

    async def append(self, stream: str, data: bytes) -> str:
        return self.append_nowait(stream, data)

    async def read(self, stream: str, after: str, limit: int = 1000) -> list[Entry]:
        pivot = parse_offset(after)
        s = self._streams.get(stream)
        if s is None:
            return []
        # Scan from the end: readers nearly always ask for the newest few entries.
        out: list[Entry] = []
        for entry in reversed(s.entries):
            if parse_offset(entry.offset) <= pivot:
                break
            out.append(entry)
        out.reverse()
        return out[:limit]

    async def history(self, stream: str, limit: int, before: str | None = None) -> list[Entry]:
        s = self._streams.get(stream)
        entries = list(s.entries) if s is not None else []
        if before is not None:
            pivot = parse_offset(before)
            entries = [e for e in entries if parse_offset(e.offset) < pivot]
        return entries[-limit:] if limit > 0 else []

    async def position(self, stream: str) -> StreamPosition:
        s = self._streams.get(stream)
        return StreamPosition(f"{s.last[0]}-{s.last[1]}" if s is not None else ZERO, self._epoch)

    async def epoch(self, stream: str) -> str:
        return self._epoch

    async def covers(self, stream: str, offset: str) -> bool:
        wanted = parse_offset(offset)
        s = self._streams.get(stream)
        if s is None:
            return wanted == (0, 0)
        if wanted == s.last:
            return True
        # Same rule as Redis: the entry at ``offset`` (or an older one) must still be retained.
        if not s.entries:
            return False
        return parse_offset(s.entries[0].offset) <= wanted < s.last or (
            wanted == (0, 0) and s.trimmed_through == (0, 0))

    async def sweep(self) -> None:
        now = time.time()
        cutoff = int((now - self.max_age) * 1000)
        idle = now - self.idle_ttl
        for name, s in list(self._streams.items()):
            entries = s.entries
            while entries and parse_offset(entries[0].offset)[0] < cutoff:
                s.trimmed_through = parse_offset(entries.popleft().offset)
            if s.written < idle:  # idle_ttl >= max_age: it is empty by now
                del self._streams[name]

    async def follow(self, positions: dict[str, str], timeout: float) -> list[tuple[str, Entry]]:
        deadline = time.monotonic() + timeout
        while True:
            self._changed.clear()
            found: list[tuple[str, Entry]] = []
            for stream, after in positions.items():
                found.extend((stream, e) for e in await self.read(stream, after, 10_000))
            if found:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                return []

    async def close(self) -> None:
        return None


# ------------------------------------------------------------------------- redis


class RedisEventLog:
    """Redis Streams log: shared by every node, survives node restarts.

    Each stream is a Redis stream ``<prefix>:log:<name>``, bounded by ``MAXLEN ~`` on append and
    by ``MINID`` in :meth:`sweep`, and expiring ``idle_ttl`` after its last append. The streams
    appended to within ``max_age`` are listed in the sorted set ``<prefix>:streams`` (score: the
    time of the last append), which is what :meth:`sweep` trims. One epoch, ``<prefix>:epoch``,
    serves every stream; it is created with ``SET NX``: if Redis loses its data, the epoch key
    goes too and a new epoch is made.

    :param client: a ``redis.asyncio.Redis`` for ordinary commands.
    :param blocking_client: a separate client for ``XREAD BLOCK`` (it holds a connection).
    :param prefix: key prefix shared by every node of one deployment.
    :param max_length: entries kept per stream (approximately).
    :param max_age: seconds an entry is kept.
    :param idle_ttl: seconds a stream is kept after its last append (at least ``max_age``).
    """

    def __init__(self, client: aioredis.Redis, blocking_client: aioredis.Redis, prefix: str = "rt",
                 max_length: int = 10_000, max_age: float = 3600.0, idle_ttl: float = 86400.0) -> None:
        self.client = client
        self.blocking = blocking_client
        self.prefix = prefix
        self.max_length = max_length
        self.max_age = max_age
        self.idle_ttl = max(idle_ttl, max_age)
        self._epoch_key = f"{prefix}:epoch"
        self._streams_key = f"{prefix}:streams"

    def _key(self, stream: str) -> str:
        return f"{self.prefix}:log:{stream}"

    async def append(self, stream: str, data: bytes) -> str:
        key = self._key(stream)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xadd(key, {"d": data}, maxlen=self.max_length, approximate=True)
            pipe.pexpire(key, max(1, int(self.idle_ttl * 1000)))
            pipe.zadd(self._streams_key, {stream: int(time.time() * 1000)})
            offset, _, _ = await pipe.execute()
        return offset.decode() if isinstance(offset, bytes) else offset

    @staticmethod
    def _entries(raw: list) -> list[Entry]:
        out = []
        for offset, fields in raw:
            offset = offset.decode() if isinstance(offset, bytes) else offset
            data = fields.get(b"d", fields.get("d"))
            if isinstance(data, bytes):
                out.append(Entry(offset, data))
        return out

    async def read(self, stream: str, after: str, limit: int = 1000) -> list[Entry]:
        parse_offset(after)
        raw = await self.client.xrange(self._key(stream), min=f"({after}", max="+", count=limit)
        return self._entries(raw)

    async def history(self, stream: str, limit: int, before: str | None = None) -> list[Entry]:
        if limit <= 0:
            return []
        top = "+" if before is None else f"({before}"
        raw = await self.client.xrevrange(self._key(stream), max=top, min="-", count=limit)
        return list(reversed(self._entries(raw)))

    async def epoch(self, stream: str) -> str:
        async with self.client.pipeline(transaction=True) as pipe:
            self._queue_epoch(pipe)
            _, value = await pipe.execute()
        return _text(value)

    def _queue_epoch(self, pipe: aioredis.client.Pipeline) -> None:
        # SET NX then GET in one round trip: the first node to ask creates the epoch.
        pipe.set(self._epoch_key, secrets.token_hex(8), nx=True)
        pipe.get(self._epoch_key)

    async def position(self, stream: str) -> StreamPosition:
        # The last offset the stream generated, also when trimming has emptied it (a newest
        # entry would say "0-0" then, a position no longer covered).
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xinfo_stream(self._key(stream))
            self._queue_epoch(pipe)
            info, _, epoch = await pipe.execute(raise_on_error=False)
        if isinstance(epoch, Exception):
            raise epoch
        if isinstance(info, Exception):  # no such stream
            return StreamPosition(ZERO, _text(epoch))
        return StreamPosition(_text(info.get("last-generated-id")) or ZERO, _text(epoch))

    async def covers(self, stream: str, offset: str) -> bool:
        wanted = parse_offset(offset)
        try:
            info = await self.client.xinfo_stream(self._key(stream))
        except ResponseError:
            # no such stream: only the empty position is covered
            return wanted == (0, 0)
        # Trimming (MAXLEN/MINID) does not move max-deleted-entry-id (only XDEL does), so
        # coverage is judged from the head of the stream: we only ever trim from the head.
        last = parse_offset(_text(info.get("last-generated-id")) or ZERO)
        if wanted > last:
            return False
        if wanted == last:
            return True
        if wanted == (0, 0):
            return info.get("entries-added") == info.get("length")
        first = info.get("first-entry")
        if not first:
            return False
        return parse_offset(_text(first[0])) <= wanted

    async def sweep(self) -> None:
        cutoff = int((time.time() - self.max_age) * 1000)
        start = 0
        while True:
            names = await self.client.zrange(self._streams_key, start, start + 499)
            if not names:
                break
            async with self.client.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.xtrim(self._key(_text(name)), minid=f"{cutoff}-0", approximate=False)
                await pipe.execute()
            start += len(names)
        # Streams last appended to before the cutoff are empty now: nothing more to trim there
        # (their keys expire by themselves, idle_ttl after that append).
        await self.client.zremrangebyscore(self._streams_key, "-inf", f"({cutoff}")

    async def follow(self, positions: dict[str, str], timeout: float) -> list[tuple[str, Entry]]:
        keys = {self._key(s): after for s, after in positions.items()}
        names = {self._key(s): s for s in positions}
        raw = await self.blocking.xread(keys, count=1000, block=max(1, int(timeout * 1000)))
        out: list[tuple[str, Entry]] = []
        for key, entries in raw or []:
            key = key.decode() if isinstance(key, bytes) else key
            out.extend((names[key], e) for e in self._entries(entries))
        return out

    async def close(self) -> None:
        await self.blocking.aclose()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")  # type: ignore[return-value]
