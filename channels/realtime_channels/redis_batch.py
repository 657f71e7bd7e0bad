"""CommandBatcher: the Redis commands issued during one event-loop turn, sent as one pipeline.

Each command sent alone through redis-py pays its per-command machinery: a connection taken
from the ``BlockingConnectionPool`` (an ``asyncio.Condition``, a timeout), the retry wrapper,
the observability recorder, a timeout around each read; measured at ~240 µs of CPU per
command under the echo benchmark, far more than Redis spends. A busy server issues many
independent single commands per turn (one dedupe claim per event, ...): here they share one
connection, one write and one read loop, and each caller awaits only its own reply.

Semantics (what a caller sees, as if it had sent its command alone):

- the pipeline is not a transaction: commands of one batch run in order, others' may run
  between them (as between commands sent alone);
- a reply error (``WRONGTYPE``, a script error) fails only its own command;
- a connection error fails every command of the batch whose reply had not arrived (it was
  possibly applied, possibly not, exactly as for a command sent alone); nothing is retried,
  the next batch takes a fresh connection;
- a caller cancelled before its batch is written is left out of it; one cancelled later
  does not disturb the others (its reply is read and dropped);
- a script runs by ``EVALSHA``; after ``NOSCRIPT`` (a restarted or flushed Redis) it is
  loaded and the refused calls are sent again on the same connection, as redis-py's
  :class:`~redis.commands.core.AsyncScript` does for a call sent alone. (redis-py's own
  ``Pipeline`` instead asks ``SCRIPT EXISTS`` before every execute: a round trip per batch.)

:func:`batcher_for` picks the batcher for a client: a plain ``redis.asyncio.Redis`` (also a
sentinel's master) gets a :class:`CommandBatcher`; :class:`ShardedRedis` one per instance
(:class:`ShardedBatcher`); a Redis Cluster client :class:`DirectCommands` (sent alone; see
there why).
"""

from __future__ import annotations

import asyncio
import math
from typing import Any, Awaitable, Iterable, Protocol, Sequence

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .sharded_redis import ShardedRedis


class Commands(Protocol):
    """What the stores send through: one command, or one call of a registered script."""

    def command(self, *args: Any) -> Awaitable[Any]:
        """Send ``args`` (``"SET", key, value, ...``; the first key second); await the reply."""

    def script(self, script: AsyncScript, keys: Sequence[Any], args: Iterable[Any] = ()) -> Awaitable[Any]:
        """Run ``script`` with ``keys`` and ``args``; await its reply."""


class _Call:
    """One command waiting in a batch: its arguments and their RESP request, its caller's
    future, and the script it calls (None for a plain command) so a ``NOSCRIPT`` reply can
    load it."""

    __slots__ = ("args", "packed", "future", "script")

    def __init__(self, args: tuple[Any, ...], packed: bytes, future: asyncio.Future,
                 script: AsyncScript | None) -> None:
        self.args = args
        self.packed = packed
        self.future = future
        self.script = script


class CommandBatcher:
    """Sends the commands issued during one event-loop turn to one Redis as one pipeline.

    :param client: the ``redis.asyncio.Redis`` whose connection pool the batches take their
        connection from, and whose response callbacks turn replies into values.
    :param max_batch: commands in one pipeline at most; later ones of the same turn go in the
        next batch (sent concurrently, on another connection), so one write and the reply
        buffer stay bounded.
    """

    def __init__(self, client: aioredis.Redis, max_batch: int = 1000) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.client = client
        self.pool = client.connection_pool
        self.callbacks = client.response_callbacks
        self.encoder = client.get_encoder()
        self.max_batch = max_batch
        self._open: list[_Call] | None = None  # the batch commands of this turn join
        self._loop: asyncio.AbstractEventLoop | None = None  # the open batch's
        self._tasks: set[asyncio.Task] = set()  # running batches (the loop keeps only weak references)

    def command(self, *args: Any) -> asyncio.Future:
        return self._add(args, None)

    def script(self, script: AsyncScript, keys: Sequence[Any], args: Iterable[Any] = ()) -> asyncio.Future:
        return self._add(("EVALSHA", script.sha, len(keys), *keys, *args), script)

    def _add(self, args: tuple[Any, ...], script: AsyncScript | None) -> asyncio.Future:
        # A plain future, not a coroutine: the caller's await costs no frame of ours.
        # Packed now: an argument redis-py cannot encode is the caller's error, not its batch's.
        packed = _pack(args, self.encoder)
        batch = self._open
        if batch is None:
            loop = self._loop = asyncio.get_running_loop()
            batch = self._open = []
            # The task's first step runs on the loop's next turn, after everything this turn
            # still does (call_soon order): every command issued this turn is in the batch by then.
            task = loop.create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            future = loop.create_future()
        else:
            future = self._loop.create_future()  # type: ignore[union-attr]
        batch.append(_Call(args, packed, future, script))
        if len(batch) >= self.max_batch:
            self._open = None  # full: the next command opens another
        return future

    async def _send(self, batch: list[_Call]) -> None:
        if self._open is batch:
            self._open = None  # later commands go in the next turn's batch
        calls = [c for c in batch if not c.future.done()]  # a caller cancelled meanwhile is left out
        if not calls:
            return
        try:
            conn = await self.pool.get_connection()
        except BaseException as exc:  # no free connection in pool_timeout, Redis unreachable
            _fail(calls, exc)
            if not isinstance(exc, Exception):
                raise
            return  # its callers have the error; the task itself ends quietly
        replies: list[Any] = []
        try:
            data = b"".join([c.packed for c in calls])
            # One deadline for the whole batch, its write and its replies, not one per reply as
            # Connection.read_response sets (an asyncio.timeout each: a third of the read cost).
            timeout = conn.socket_timeout
            if timeout is None:
                await conn.send_packed_command(data)
                for _ in calls:
                    replies.append(await _reply(conn))
            else:
                try:
                    async with asyncio.timeout(timeout):
                        # With a socket_timeout redis-py writes through asyncio.wait_for: a Task,
                        # and the write a loop turn later. The deadline above bounds it instead.
                        conn.socket_timeout = None
                        try:
                            await conn.send_packed_command(data)
                        finally:
                            conn.socket_timeout = timeout
                        for _ in calls:
                            replies.append(await _reply(conn))
                except TimeoutError:
                    # What Connection.read_response raises when socket_timeout runs out.
                    where = getattr(conn, "path", None) or f"{getattr(conn, 'host', '?')}:{getattr(conn, 'port', '?')}"
                    raise RedisTimeoutError(f"Timeout reading from {where}") from None
            if any(type(r) is NoScriptError for r in replies):
                await self._load_and_resend(conn, calls, replies)
        except BaseException as exc:
            # The connection is out of step (replies unread) or dead: never hand it back as is.
            await conn.disconnect()
            _resolve(calls[:len(replies)], replies, self.callbacks)
            _fail(calls[len(replies):], exc)
            if not isinstance(exc, Exception):
                raise  # cancelled (the loop is closing): let it end the task
            return
        finally:
            await self.pool.release(conn)
        _resolve(calls, replies, self.callbacks)

    async def _load_and_resend(self, conn: Any, calls: list[_Call], replies: list[Any]) -> None:
        """Load the scripts Redis did not know and send their refused calls again (a refused
        call did not run, so sending it again applies it once)."""
        refused = [i for i, r in enumerate(replies) if type(r) is NoScriptError and calls[i].script is not None]
        scripts = list({id(calls[i].script): calls[i].script for i in refused}.values())
        await conn.send_packed_command(conn.pack_commands([("SCRIPT", "LOAD", s.script) for s in scripts]))
        for script in scripts:
            sha = await _reply(conn)
            if isinstance(sha, ResponseError):
                raise sha
            script.sha = sha.decode() if isinstance(sha, bytes) else sha
        again = [("EVALSHA", calls[i].script.sha, *calls[i].args[2:]) for i in refused]  # type: ignore[union-attr]
        await conn.send_packed_command(conn.pack_commands(again))
        for i in refused:
            replies[i] = await _reply(conn)


def _pack(args: tuple[Any, ...], encoder: Any) -> bytes:
    """The RESP request of one command.

    What ``Connection.pack_command`` makes, for the argument types the stores send (bytes,
    str, int; anything else through redis-py's ``encoder``, which also refuses what it
    refuses), without its general work (a command name split at spaces, protocol checks,
    chunking of large values, an encoder call per argument): it was half the CPU of a batch.
    A command name here is one word.
    """
    out = [b"*%d\r\n" % len(args)]
    add = out.extend  # one call per argument, not three appends
    for arg in args:
        kind = type(arg)
        if kind is str:
            arg = arg.encode(encoder.encoding, encoder.encoding_errors)
        elif kind is int:
            arg = b"%d" % arg
        elif kind is not bytes:
            arg = encoder.encode(arg)
        add((b"$%d\r\n" % len(arg), arg, b"\r\n"))
    return b"".join(out)


async def _reply(conn: Any) -> Any:
    """The next reply on ``conn``; a reply error is returned (it belongs to one command)."""
    try:
        # math.inf: no per-read timeout (the caller sets one for the batch).
        return await conn.read_response(timeout=math.inf)
    except ResponseError as exc:
        return exc


def _resolve(calls: list[_Call], replies: list[Any], callbacks: Any) -> None:
    for call, reply in zip(calls, replies):
        future = call.future
        if future.done():
            continue  # its caller was cancelled
        if isinstance(reply, ResponseError):
            future.set_exception(reply)
            continue
        callback = callbacks.get(call.args[0])
        if callback is None:
            future.set_result(reply)
            continue
        try:
            future.set_result(callback(reply))
        except Exception as exc:  # a reply its callback cannot parse: that caller's error only
            future.set_exception(exc)


def _fail(calls: list[_Call], exc: BaseException) -> None:
    for call in calls:
        if not call.future.done():
            if isinstance(exc, asyncio.CancelledError):
                call.future.cancel()
            else:
                call.future.set_exception(exc)


class ShardedBatcher:
    """One :class:`CommandBatcher` per instance of a :class:`ShardedRedis`, each command on the
    instance of its first key (a script's first key), as :class:`ShardedRedis` routes it.

    :param client: the sharded client; its instances' clients carry the batches.
    :param max_batch: as for :class:`CommandBatcher`, per instance.
    """

    def __init__(self, client: ShardedRedis, max_batch: int = 1000) -> None:
        self.client = client
        self.batchers = [CommandBatcher(shard, max_batch) for shard in client.shards]

    def command(self, *args: Any) -> asyncio.Future:
        return self.batchers[self.client.shard_index(args[1])].command(*args)

    def script(self, script: AsyncScript, keys: Sequence[Any], args: Iterable[Any] = ()) -> asyncio.Future:
        # The script object is shared by the instances: a NOSCRIPT on one reloads it there,
        # and the sha is the same everywhere.
        return self.batchers[self.client.shard_index(keys[0])].script(script, keys, args)


class DirectCommands:
    """Each command sent alone, through the client's own ``execute_command``: for a Redis
    Cluster client, which is not batched.

    Why not: redis-py's ``ClusterPipeline`` runs no script loading (a ``NOSCRIPT`` reply would
    come back as the command's error, unlike the cluster client's direct ``EVALSHA``), and
    every batch would need a per-node split, a permit of :class:`BoundedRedisCluster` and
    MOVED/ASK handling per command; keeping the cluster's own path keeps its redirection and
    topology refresh as they are.

    :param client: the cluster client (any client with ``execute_command`` works).
    """

    def __init__(self, client: Any) -> None:
        self.client = client

    def command(self, *args: Any) -> Awaitable[Any]:
        return self.client.execute_command(*args)

    def script(self, script: AsyncScript, keys: Sequence[Any], args: Iterable[Any] = ()) -> Awaitable[Any]:
        return script(keys=keys, args=args, client=self.client)


def batcher_for(client: Any, max_batch: int = 1000) -> Commands:
    """The :class:`Commands` for ``client``: batched for a plain Redis (a sentinel's master
    included) and for sharded instances, sent alone for a Redis Cluster.

    :param client: the client :func:`server.stores.redis_client` made.
    :param max_batch: commands in one pipeline at most.
    """
    if isinstance(client, ShardedRedis):
        return ShardedBatcher(client, max_batch)
    if isinstance(client, aioredis.Redis) and not isinstance(client, aioredis.client.Pipeline):
        return CommandBatcher(client, max_batch)
    return DirectCommands(client)
