"""BoundedRedisCluster: redis-py's asyncio ``RedisCluster`` whose commands wait for a free
connection instead of failing.

redis-py's cluster client raises ``MaxConnectionsError`` as soon as a node's connections are all
busy (it has no blocking pool), which is what made connect storms fail on a single Redis before
``BlockingConnectionPool``. Here every command and every pipeline first takes one of
``max_connections`` permits, waiting up to ``pool_timeout`` seconds; a command uses at most one
connection per node, so no node is ever asked for more than ``max_connections``.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.exceptions import ConnectionError

# Set while a task holds a permit: a pipeline that resends a redirected command through the
# client must not wait for a second permit (with one permit left it would wait for itself).
_holding: contextvars.ContextVar[bool] = contextvars.ContextVar("redis_cluster_permit", default=False)


class _Permits:
    """``size`` permits, taken with a timeout; re-entrant within one task."""

    def __init__(self, size: int, timeout: float) -> None:
        self.semaphore = asyncio.Semaphore(size)
        self.timeout = timeout

    async def run(self, call: Any) -> Any:
        if _holding.get():
            return await call()
        try:
            await asyncio.wait_for(self.semaphore.acquire(), self.timeout)
        except asyncio.TimeoutError:
            # What BlockingConnectionPool raises in the same case: callers handle one error.
            raise ConnectionError("No connection available.") from None
        token = _holding.set(True)
        try:
            return await call()
        finally:
            _holding.reset(token)
            self.semaphore.release()


class BoundedRedisCluster(RedisCluster):
    """:param max_connections: commands (and pipelines) in flight at once, and so connections
        per node at most. :param pool_timeout: seconds a command waits for its turn, then
        ``ConnectionError("No connection available.")``. Other arguments: ``RedisCluster``'s."""

    def __init__(self, *args: Any, max_connections: int = 100, pool_timeout: float = 10.0,
                 **kwargs: Any) -> None:
        super().__init__(*args, max_connections=max_connections, **kwargs)
        self.permits = _Permits(max_connections, pool_timeout)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        return await self.permits.run(lambda: self._initialized_then(RedisCluster.execute_command, self, *args,
                                                                     **kwargs))

    async def _initialized_then(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        # redis-py 8.1: commands started together on a client that has not read the cluster's
        # topology yet sometimes fail ("'NoneType' object has no attribute 'writelines'", a
        # connection closed under another command); reading it first (once, under
        # initialize()'s lock) avoids that (tests/test_stores.py, cold-start test).
        if self._initialize:
            await self.initialize()
        return await method(*args, **kwargs)

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        super().pipeline(transaction, shard_hint)  # its argument checks
        return _BoundedPipeline(self, transaction)


class _BoundedPipeline(ClusterPipeline):
    __slots__ = ()

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        client: BoundedRedisCluster = self.cluster_client  # type: ignore[assignment]
        return await client.permits.run(
            lambda: client._initialized_then(ClusterPipeline.execute, self, raise_on_error, allow_redirections))
