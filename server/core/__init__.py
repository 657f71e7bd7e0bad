"""The delivery core: per-channel logs with offsets, epochs and notifications.

Imports only the standard library, ``redis.asyncio`` and ``msgpack`` — never the rest of the
server — so an emitter (Django, Celery) can publish through the very same definitions.
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
