"""Routing over several independent Redis instances: one definition for the server and the
emitters, so a publish lands on the instance every node reads that channel from.

A name (key or pub/sub channel) is routed by its hash tag, as Redis Cluster routes it: the
text between the first ``{`` and the first ``}`` after it, when that is not empty; else the
whole name. Every key of a channel (``<prefix>:{<channel>}:stream``, ``:meta``, ``:idem:…``)
and its notification channel (``…:pub``) share the tag, so they share an instance, and a Lua
script or a transaction over them runs on one server — the same layout that keeps each of
them in one slot of a cluster.

The tag is hashed with BLAKE2b (8 bytes, stable across processes and Python versions, unlike
``hash()``) and mapped to an instance with jump consistent hash (Lamping & Veach, 2014): the
instances are numbered by their place in the configured list, and growing the list from n to
n + 1 moves only ~1/(n + 1) of the tags, all of them to the new instance.

The URL naming the instances::

    redis+shards://[user:password@]host1:port1,host2:port2,...[/db][?option=value...]

``rediss+shards://`` connects to each with TLS; ``valkey+shards://`` / ``valkeys+shards://``
are the same. Credentials, database and options apply to every instance. The order of the
list is the routing: append new instances at the end, never reorder or remove.
"""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit

# Scheme of a sharded URL -> scheme of each instance's URL.
SHARD_SCHEMES = {"redis+shards": "redis", "rediss+shards": "rediss",
                 "valkey+shards": "redis", "valkeys+shards": "rediss"}

_MASK = 0xFFFFFFFFFFFFFFFF


def is_shards_url(url: str) -> bool:
    """Whether ``url`` names several instances sharded by hash tag (``redis+shards://``…)."""
    return url.partition("://")[0] in SHARD_SCHEMES


def hash_tag(name: str | bytes) -> bytes:
    """The part of ``name`` that routes it: its ``{tag}`` as Redis Cluster reads it, else all of it."""
    raw = name.encode() if isinstance(name, str) else bytes(name)
    start = raw.find(b"{")
    if start != -1:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            return raw[start + 1:end]
    return raw


def jump_hash(key: int, buckets: int) -> int:
    """Jump consistent hash: the bucket in ``range(buckets)`` of the 64-bit ``key``."""
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    key &= _MASK
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & _MASK
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def shard_of(name: str | bytes, count: int) -> int:
    """The index (in the configured list of ``count`` instances) of the instance holding ``name``."""
    if count == 1:
        return 0
    digest = hashlib.blake2b(hash_tag(name), digest_size=8).digest()
    return jump_hash(int.from_bytes(digest, "big"), count)


def shard_urls(url: str) -> list[str]:
    """The plain ``redis://`` (or ``rediss://``) URL of each instance a sharded ``url`` lists,
    in order; credentials, database and query apply to each. Raises ValueError for a URL that
    is not ``<scheme>+shards://host:port[,host:port...][/db]``."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in SHARD_SCHEMES:
        raise ValueError(f"a sharded Redis URL starts with one of {', '.join(s + '://' for s in SHARD_SCHEMES)}")
    parts = urlsplit(url)
    credentials, at, hosts = parts.netloc.rpartition("@")
    out = []
    for item in hosts.split(","):
        host, colon, port = item.rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"a sharded Redis URL lists instances as host:port[,host:port...], got {item!r}")
        out.append(item)
    if len(set(out)) != len(out):
        raise ValueError("a sharded Redis URL lists an instance twice")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"the database of a sharded Redis URL is a number, got {path!r}")
    tail = (f"/{path}" if path else "") + (f"?{parts.query}" if parts.query else "")
    base = SHARD_SCHEMES[scheme]
    return [f"{base}://{credentials}{at}{item}{tail}" for item in out]


def instance_name(url: str) -> str:
    """``host:port`` of an instance's URL (for logs: no credentials)."""
    return url.partition("://")[2].rpartition("@")[2].partition("/")[0].partition("?")[0]
