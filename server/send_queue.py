"""SendQueue: the part of asyncio.Queue python-engineio uses for a session's outgoing packets;
Backlog: the bounds on what may wait for one session.

An ``asyncio.Queue`` allocates three deques and an Event up front, about 3 KiB, and most
sessions' queues are empty nearly all the time (packets to a WebSocket are written directly
when nothing is queued). This one holds nothing until a packet is queued, and lets go of its
storage when it is drained. It counts the bytes it holds, so :class:`Backlog` can bound a
client that does not read in bytes as well as in packets.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Callable


def packet_size(pkt: Any) -> int:
    """What an outgoing Engine.IO packet weighs: the length of its payload (characters for
    text, bytes for binary; 0 for a control packet or the None that ends a session)."""
    data = getattr(pkt, "data", None)
    return len(data) if isinstance(data, (str, bytes)) else 0


class Backlog:
    """The bounds on what may wait for one session, shared by every session of a server.

    What waits is the session's queued packets plus, on a WebSocket, what its TCP transport has
    not yet handed to the kernel. A packet is always admitted when nothing waits (however big,
    or a client could never receive it); otherwise it must fit. Past a bound the session is
    cut (``cut``), recoverably, and neither that packet nor any later one is sent: a smaller
    packet let through after a dropped one would move the client's offset past what it missed.

    :param max_packets: packets a session's queue may hold (``limits.send_queue_max``).
    :param max_bytes: bytes that may wait for a session (``limits.send_queue_max_bytes``).
    :param cut: called with the session id of a session over a bound; disconnects it.
    """

    __slots__ = ("max_packets", "max_bytes", "cut")

    def __init__(self, max_packets: int, max_bytes: int, cut: Callable[[str], None]) -> None:
        self.max_packets = max_packets
        self.max_bytes = max_bytes
        self.cut = cut

    def admit(self, socket: Any, size: int) -> bool:
        """Whether ``size`` more bytes may wait for ``socket`` (a RealtimeSocket). When not,
        the socket is cut and the caller drops what it was about to send."""
        if socket.overflowed:
            return False
        queue = socket.queue
        waiting = queue.waiting_bytes() + socket.write_buffer_size()
        if queue.qsize() < self.max_packets and (not waiting or waiting + size <= self.max_bytes):
            return True
        socket.overflowed = True
        self.cut(socket.sid)
        return False

    def admit_direct(self, socket: Any, buffered: int, size: int) -> bool:
        """:meth:`admit` for a frame written straight to the socket's transport, which happens
        only while its queue is empty: the same decision from ``buffered``, what that transport
        has not yet handed to the kernel (the caller just read it), without reading it again
        (once per recipient of a fan-out)."""
        if socket.overflowed:
            return False
        if self.max_packets > 0 and (not buffered or buffered + size <= self.max_bytes):
            return True
        socket.overflowed = True
        self.cut(socket.sid)
        return False


class SendQueue:
    """A FIFO with asyncio.Queue's methods and counters: ``put``/``put_nowait``, ``get``/
    ``get_nowait``, ``task_done``/``join``, ``qsize``/``empty``, and ``_unfinished_tasks``
    (an item counts from its put until ``task_done``), and ``waiting_bytes``. Unbounded, like
    engineio's: :class:`Backlog` decides what may be put."""

    __slots__ = ("_queue", "_getters", "_joiners", "_unfinished_tasks", "_bytes", "on_put")

    def __init__(self) -> None:
        # Called after every put: a WebSocket session starts its writer from here.
        self.on_put: Callable[[], None] | None = None
        self._queue: deque[Any] | None = None
        self._getters: list[asyncio.Future[None]] | None = None
        self._joiners: list[asyncio.Future[None]] | None = None
        self._unfinished_tasks = 0
        self._bytes = 0

    def qsize(self) -> int:
        return len(self._queue) if self._queue else 0

    def empty(self) -> bool:
        return not self._queue

    def waiting_bytes(self) -> int:
        """The summed :func:`packet_size` of what is queued."""
        return self._bytes

    def items(self) -> tuple[Any, ...]:
        """What is queued, oldest first."""
        return tuple(self._queue) if self._queue else ()

    def put_nowait(self, item: Any) -> None:
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        queue.append(item)
        self._bytes += packet_size(item)
        self._unfinished_tasks += 1
        if self._getters:
            self._wake_getter()
        if self.on_put is not None:
            self.on_put()

    async def put(self, item: Any) -> None:
        self.put_nowait(item)

    def get_nowait(self) -> Any:
        queue = self._queue
        if not queue:
            raise asyncio.QueueEmpty
        item = queue.popleft()
        self._bytes -= packet_size(item)
        if not queue:
            self._queue = None
        return item

    async def get(self) -> Any:
        while not self._queue:
            waiter = asyncio.get_running_loop().create_future()
            if self._getters is None:
                self._getters = []
            self._getters.append(waiter)
            try:
                await waiter
            except BaseException:
                waiter.cancel()
                if self._getters and waiter in self._getters:
                    self._getters.remove(waiter)
                if self._queue and self._getters:
                    self._wake_getter()  # the wake-up may have been meant for this getter
                raise
        return self.get_nowait()

    def _wake_getter(self) -> None:
        getters = self._getters
        while getters:
            waiter = getters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                break
        if not getters:
            self._getters = None

    def task_done(self) -> None:
        if self._unfinished_tasks <= 0:
            raise ValueError("task_done() called too many times")
        self._unfinished_tasks -= 1
        if self._unfinished_tasks == 0 and self._joiners:
            joiners, self._joiners = self._joiners, None
            for waiter in joiners:
                if not waiter.done():
                    waiter.set_result(None)

    async def join(self) -> None:
        while self._unfinished_tasks:
            waiter = asyncio.get_running_loop().create_future()
            if self._joiners is None:
                self._joiners = []
            self._joiners.append(waiter)
            await waiter
