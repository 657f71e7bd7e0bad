"""Server API keys: who is calling (a key's name) and how often they may (a token bucket per key).

A key is configured plain or as an scrypt hash (``[api] keys``, ``$API_KEYS``). A presented key
is compared in constant time; an scrypt check runs off the event loop, one at a time, and its
answer is cached per process (bounded in count and age) so a client does not pay scrypt on
every request. Keys never leave this module: callers only ever see a key's name.

``python -m server.api_keys hash`` prints the ``key_hash`` of a key read from standard input.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass

from .config import ApiKey
from .scrypt_hash import scrypt_hash, scrypt_matches

# Answers of scrypt checks kept per process: this many at most, each for CACHE_TTL seconds.
CACHE_SIZE = 1024
CACHE_TTL = 300.0
# scrypt checks waiting for their turn; past this an unknown key is refused as "busy" at once,
# so a flood of made-up keys cannot queue unbounded work.
MAX_WAITING_CHECKS = 32


# The stored form of an API key (``[api] keys`` ``key_hash``; the format admin.password_hash takes).
hash_key = scrypt_hash
_matches_hash = scrypt_matches


class KeyBusy(Exception):
    """Too many scrypt checks are waiting: the request is refused without checking its key."""


class KeyRing:
    """The configured keys.

    :param keys: ``[api] keys`` as validated by :mod:`server.config`.
    """

    def __init__(self, keys: tuple[ApiKey, ...]) -> None:
        # Plain keys are kept as SHA-256 digests: equal lengths, so compare_digest is constant time.
        self._plain = [(hashlib.sha256(k.key.encode()).digest(), k.name) for k in keys if k.key]
        self._hashed = [(k.key_hash, k.name) for k in keys if k.key_hash]
        self._cache: OrderedDict[bytes, tuple[float, str | None]] = OrderedDict()
        self._lock = asyncio.Lock()
        self._waiting = 0

    @property
    def enabled(self) -> bool:
        return bool(self._plain or self._hashed)

    async def name_of(self, presented: str) -> str | None:
        """The name of the key ``presented`` is, or None when it is none of them.

        :raises KeyBusy: when it would have to wait behind too many scrypt checks.
        """
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for known, name in self._plain:  # every entry is compared: no early exit to time
            if hmac.compare_digest(known, digest):
                found = name
        if found is not None or not self._hashed:
            return found
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > time.monotonic():
            self._cache.move_to_end(digest)
            return cached[1]
        if self._waiting >= MAX_WAITING_CHECKS:
            raise KeyBusy()
        self._waiting += 1
        try:
            async with self._lock:  # one scrypt (16 MiB, ~50 ms) at a time, in a worker thread
                found = await asyncio.to_thread(self._check_hashed, presented)
        finally:
            self._waiting -= 1
        self._cache[digest] = (time.monotonic() + CACHE_TTL, found)
        self._cache.move_to_end(digest)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return found

    def _check_hashed(self, presented: str) -> str | None:
        found = None
        for stored, name in self._hashed:
            if _matches_hash(presented, stored):
                found = name
        return found


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """A token bucket per key name (names come from configuration, so the table is bounded).

    :param rate: requests per second a key is allowed on this node.
    :param burst: requests a key may make at once after being idle.
    """

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, _Bucket] = {}

    def take(self, name: str, cost: int = 1) -> float:
        """Take ``cost`` requests from ``name``'s allowance: 0 when allowed, else the seconds
        to wait before that many are available again (nothing is taken then)."""
        now = time.monotonic()
        bucket = self._buckets.get(name)
        if bucket is None:
            bucket = self._buckets[name] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            return 0.0
        return (cost - bucket.tokens) / self.rate


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


def main(argv: list[str]) -> int:
    if argv[:1] != ["hash"]:
        print("usage: python -m server.api_keys hash < key-file", file=sys.stderr)
        return 2
    key = sys.stdin.readline().strip()
    if len(key) < 24:
        print("a key must be at least 24 characters", file=sys.stderr)
        return 2
    print(hash_key(key))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
