"""realtime-channels: the channel log the realtime server delivers from, and emitters that
publish into it from any Python process (a Django view, a Celery task).

Depends only on the standard library, ``redis`` and ``msgpack`` — never on the server,
aiohttp or python-socketio (``tests/test_layout.py`` checks it) — so a web app or a worker
installs it alone, and the server imports the very same definitions:

* :mod:`.channel_log` — the contract (publish → offset and epoch, history, subscriptions)
  and the in-memory implementation;
* :mod:`.redis_channel_log` — the Redis implementation: key layout, the one Lua publish script;
* :mod:`.redis_pubsub` — per-channel subscriptions kept alive across lost connections;
* :mod:`.sharding` and :mod:`.sharded_redis` — several independent Redis instances
  (``redis+shards://``), each channel on the one its hash tag routes to;
* :mod:`.envelope` — what a publication holds and how channels are named;
* :mod:`.emitter` — :class:`Emitter`, :class:`AsyncEmitter` (straight to Redis) and
  :class:`HttpEmitter` (through the server's HTTP API).
"""

from .channel_log import (
    EMPTY,
    ChannelBounds,
    ChannelLog,
    ChannelLogError,
    HistoryResult,
    MemoryChannelLog,
    Publication,
    PublishResult,
    StreamPosition,
)
from .redis_channel_log import RedisChannelLog

__all__ = [
    "EMPTY",
    "ChannelBounds",
    "ChannelLog",
    "ChannelLogError",
    "HistoryResult",
    "MemoryChannelLog",
    "Publication",
    "PublishResult",
    "RedisChannelLog",
    "StreamPosition",
]
