"""What one Socket.IO connect costs the event loop in the embedded mode (no Redis): no Task,
and no call_soon beyond the transport's own. Every channel a connect follows (the namespace's,
the socket's own room, the ``user:<id>`` room) is opened inline by the in-process channel
log; a Task per channel, and the hand-offs of awaiting it, were most of the loop's work per
connect (bench/connect_cost.py). The server runs in this process so its Tasks can be counted."""

from __future__ import annotations

import asyncio
import json
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
                # Each socket is in its rooms; only the namespace's channel is followed (the
                # others are, once something is published to them).
                for room in (None, sid, user_room(user)):
                    assert sid in manager.rooms[namespace][room]
                assert (channel_name(namespace, user_room(user)) in manager.deliveries.cursors) is False
            assert "/bench" in manager.deliveries.cursors
            for ws in [first, *clients]:
                await ws.close()
    finally:
        await runner.cleanup()


async def _connect_with(session: aiohttp.ClientSession, port: int, auth: dict[str, Any],
                        before_reply: list[Any] | None = None) -> tuple[aiohttp.ClientWebSocketResponse, dict]:
    """A WebSocket CONNECTed to /bench with ``auth``: the socket and the CONNECT reply; events
    written before the reply (a recovery's replay) are put in ``before_reply``."""
    ws = await session.ws_connect(f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket")
    assert (await ws.receive_str()).startswith("0")
    await ws.send_str("40/bench," + json.dumps(auth))
    while True:
        text = await ws.receive_str()
        if text.startswith("40/bench,"):
            return ws, json.loads(text[len("40/bench,"):])
        assert text.startswith("42/bench,"), text
        if before_reply is not None:
            before_reply.append(json.loads(text[len("42/bench,"):]))


async def _event(ws: aiohttp.ClientWebSocketResponse) -> list[Any]:
    text = await asyncio.wait_for(ws.receive_str(), 5)
    assert text.startswith("42/bench,"), text
    return json.loads(text[len("42/bench,"):])


async def test_a_user_room_followed_from_its_first_publication_reaches_every_connection_and_recovers():
    """The embedded mode follows a ``user:<id>`` room's channel only once something is
    published to it: a publication still reaches every connection of the user, and a socket
    that joined after earlier publications recovers exactly what it missed (its origin is the
    channel's position when it joined, not the channel's start)."""
    runner, app, port = await start_server()
    runtime = app["runtime"]
    manager = runtime.sio.manager
    try:
        async with aiohttp.ClientSession() as session:
            identity = runtime.authenticator.guest()
            guest = runtime.authenticator.guest_token(identity)
            room = user_room(identity.user)
            # Published while the user has no connection: the channel exists, nobody follows it.
            await manager.publish("/bench", room, "note", [{"n": 0}])
            first, reply = await _connect_with(session, port, {"guestToken": guest})
            assert runtime.identities[("/bench", reply["sid"])].user == identity.user
            assert channel_name("/bench", room) not in manager.deliveries.cursors
            # Cut; n=1 is published meanwhile (still nobody follows the channel).
            await first.close()
            for _ in range(100):
                if not runtime.sio.eio.sockets:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)  # its session is saved
            await manager.publish("/bench", room, "note", [{"n": 1}])
            replayed: list[Any] = []
            first, again = await _connect_with(session, port, {"guestToken": guest, "pid": reply["pid"]}, replayed)
            assert again["sid"] == reply["sid"]  # recovered, with n=1 only: n=0 was before its join
            assert [event[:2] for event in replayed] == [["note", {"n": 1}]]
            second, _ = await _connect_with(session, port, {"guestToken": guest})
            await manager.publish("/bench", room, "note", [{"n": 2}])
            assert (await _event(first))[:2] == ["note", {"n": 2}]
            assert (await _event(second))[:2] == ["note", {"n": 2}]
            for ws in (first, second):
                await ws.close()
    finally:
        await runner.cleanup()
