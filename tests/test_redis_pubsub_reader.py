"""The pub/sub reader's fast path reads redis-py's private hiredis reader (``_parser._reader``,
see channels/realtime_channels/redis_pubsub.py ``buffered_replies``): this names it when an
update of redis-py moves it, and shows it returns buffered replies and NO_REPLY when none is
complete (redis-py's NOT_ENOUGH_DATA), on a real redis-server."""

from __future__ import annotations

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from realtime_channels.redis_pubsub import NO_REPLY, buffered_replies


async def test_buffered_replies_reads_hiredis_replies_of_a_connection(redis_url):
    client = aioredis.Redis.from_url(redis_url, protocol=2)
    conn = await client.connection_pool.get_connection()
    try:
        assert isinstance(conn._parser._reader, hiredis.Reader), "redis-py no longer keeps its hiredis reader here"
        buffered = buffered_replies(conn)
        assert buffered is not None
        assert buffered() is NO_REPLY  # nothing received yet
        await conn.send_packed_command(conn.pack_commands([("PING",), ("ECHO", "two"), ("NOSUCHCOMMAND",)]))
        assert await conn.read_response() == b"PONG"  # reads from the socket: the rest is buffered
        assert buffered() == b"two"
        error = buffered()
        assert isinstance(error, ResponseError) and "unknown command" in str(error)
        assert buffered() is NO_REPLY
    finally:
        await client.connection_pool.release(conn)
        await client.aclose()
