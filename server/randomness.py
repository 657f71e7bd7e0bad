"""Random ids for the connect path, from one buffer of ``os.urandom``.

A connect makes several random ids (its Engine.IO and Socket.IO session ids, its recovery
``pid``, a new guest's id); ``secrets.token_*`` makes each with a ``getrandom`` call and three
Python-level calls. Here the bytes are cut from a 4 KiB buffer of ``os.urandom``, refilled when
spent: the same source and strength, each byte handed out once. A forked child starts with an
empty buffer, so it never hands out what its parent does.
"""

from __future__ import annotations

import os
from binascii import b2a_base64

_SIZE = 4096


class _Buffer:
    __slots__ = ("data", "used")

    def __init__(self) -> None:
        self.data, self.used = b"", 0

    def reset(self) -> None:
        self.data, self.used = b"", 0


_buffer = _Buffer()
os.register_at_fork(after_in_child=_buffer.reset)
_URLSAFE = bytes.maketrans(b"+/", b"-_")


def token_bytes(n: int) -> bytes:
    """``n`` random bytes, as ``secrets.token_bytes``."""
    data, used = _buffer.data, _buffer.used
    if used + n > len(data):
        data, used = _buffer.data, _buffer.used = os.urandom(max(_SIZE, n)), 0
    _buffer.used = used + n
    return data[used:used + n]


def urlsafe(data: bytes) -> str:
    """``data`` in base64 with ``-`` and ``_`` (padding kept)."""
    return b2a_base64(data, newline=False).translate(_URLSAFE).decode()


def token_urlsafe(n: int) -> str:
    """``n`` random bytes in URL-safe base64 without padding, as ``secrets.token_urlsafe``."""
    return urlsafe(token_bytes(n)).rstrip("=")


def token_hex(n: int) -> str:
    """``n`` random bytes as ``2n`` lowercase hex digits, as ``secrets.token_hex``."""
    return token_bytes(n).hex()
