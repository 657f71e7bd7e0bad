"""What one Socket.IO connect costs the event loop in the embedded mode (no Redis): no Task,
and no call_soon beyond the transport's own. Every channel a connect follows (the namespace's,
the socket's own room, the ``user:<id>`` room) is opened inline by the in-process channel
log; a Task per channel, and the hand-offs of awaiting it, were most of the loop's work per
connect (bench/connect_cost.py). The server runs in this process so its Tasks can be counted."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from realtime_channels.envelope import channel_name

from server.namespace import user_room

from test_lean_connection import connect, start_server


async def test_an_embedded_connect_creates_no_task():
    runner, app, port = await start_server()
    loop = asyncio.get_running_loop()
    made: list[str] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task:
        made.append(getattr(coro, "__qualname__", repr(coro)))
        return asyncio.Task(coro, loop=loop, **kwargs)

    try:
        async with aiohttp.ClientSession() as session:
            # The first session starts what a server starts once (python-engineio's service
            # task, the channel log's sweeper).
            first = await connect(session, port)
            await asyncio.sleep(0.1)
            loop.set_task_factory(factory)
            try:
                clients = [await connect(session, port) for _ in range(5)]
                await asyncio.sleep(0.1)
            finally:
                loop.set_task_factory(None)
            # asyncio's server accepts each connection in a Task of its own (the loop's, not ours).
            assert [name for name in made if name != "BaseSelectorEventLoop._accept_connection2"] == [], made
            manager = app["runtime"].sio.manager
            # Each socket's own room and its user room are followed all the same.
            sids = [sid for sid in manager.positions if sid[0] == "/bench"]
            assert len(sids) == 6
            identities = app["runtime"].identities
            for namespace, sid in sids:
                user = identities[(namespace, sid)].user
                for room in (None, sid, user_room(user)):
                    assert channel_name(namespace, room) in manager.deliveries.cursors
                    assert sid in manager.rooms[namespace][room]
            for ws in [first, *clients]:
                await ws.close()
    finally:
        await runner.cleanup()
