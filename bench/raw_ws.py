"""The raw WebSocket client pieces and the CPU clock the in-process cost tools share
(bench/echo_cost.py, fanout_cost.py): frames written and read as bytes, so the client's own
cost stays small and predictable."""

from __future__ import annotations

import asyncio
import os
import struct
from pathlib import Path


def masked_frame(text: str, mask: bytes | None = None) -> bytes:
    """A client-to-server WebSocket text frame carrying ``text``.

    :param mask: the 4-byte masking key; None: a fresh random key, as the harness's client (and
        any browser) masks, so the server unmasks real bytes. A zero key sends the text as is.
    """
    payload = text.encode()
    n = len(payload)
    head = bytes((0x81, 0x80 | n)) if n < 126 else bytes((0x81, 0x80 | 126)) + struct.pack("!H", n)
    mask = os.urandom(4) if mask is None else mask
    key = int.from_bytes((mask * ((n + 3) >> 2))[:n], "little")
    return head + mask + (int.from_bytes(payload, "little") ^ key).to_bytes(n, "little")


async def read_text_frame(reader: asyncio.StreamReader) -> str:
    """The next server-to-client frame's payload, decoded (the server sends unmasked text)."""
    head = await reader.readexactly(2)
    n = head[1] & 0x7F
    if n == 126:
        n = struct.unpack("!H", await reader.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", await reader.readexactly(8))[0]
    return (await reader.readexactly(n)).decode()


def cpu_seconds() -> tuple[float, float]:
    """This process's user and system CPU time so far, from /proc/self/stat."""
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick
