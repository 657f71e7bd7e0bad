"""The connect path's shortcuts give what the generic code they replace gave, and what a
socket keeps once is still there when its session is saved and restored."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from harness import monitored
from realtime_channels.redis_channel_log import channel_keys
from server.auth import Identity


def test_identity_to_dict_is_asdict() -> None:
    """Identity.to_dict is written out by hand (asdict deep-copies, once per connect): it must
    name every field, and copy the lists, as asdict does."""
    identity = Identity(user="u1", name="U", guest=False, expires=5.0, namespaces=["/chat"], rooms=["a:"],
                        role="admin", issued=1.5, notice="n")
    assert identity.to_dict() == dataclasses.asdict(identity)
    assert list(identity.to_dict()) == [f.name for f in dataclasses.fields(Identity)]
    copied = identity.to_dict()
    assert copied["namespaces"] is not identity.namespaces and copied["rooms"] is not identity.rooms
    assert Identity.from_dict(copied) == identity
    guest = Identity(user="guest-abcdefgh", name="g", guest=True)
    assert guest.to_dict() == dataclasses.asdict(guest)


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_recovery_restores_the_identity_twice(servers, js, proxies, redis_url, store):
    """A socket's identity is kept once (runtime.identities) and put in each save of its
    session (BaseNamespace.saved_state): a guest recovered after a cut is the same guest, with
    its name, and stays so after a second cut (its restored session is saved again)."""
    env = {"PING_INTERVAL": "1", "PING_TIMEOUT": "1"}
    if store == "redis":
        env["REDIS_URL"] = redis_url
    srv = servers(env=env)
    proxy = await proxies([srv.port])
    first = await js.connect("g", proxy.url + "/chat", transports=["websocket"], auth={"name": "Zed"})
    me = await js.emit("g", "whoami")
    assert me["guest"] is True and me["name"] == "Zed"
    for count in (2, 3):
        proxy.down()
        await js.call("waitDisconnects", name="g", count=count - 1)
        proxy.up()
        state = await js.call("waitConnects", name="g", count=count)
        # Without its identity the saved session is not restored (may_recover), and a guest
        # connecting afresh without its guest token gets a new guest id.
        assert state["recovered"] is True and state["sid"] == first["sid"], state
        assert await js.emit("g", "whoami") == me


async def test_session_environ_is_the_environ_python_engineio_built() -> None:
    """What a session keeps of its request's environ (SessionEnviron) reads as the dict
    python-engineio's aiohttp driver built for that request, however it is read, after the
    request is over too."""
    import aiohttp
    from aiohttp import web
    from aiohttp.test_utils import TestServer
    from engineio.async_drivers.aiohttp import translate_request

    from server.session_environ import SessionEnviron

    kept: list[tuple[SessionEnviron, dict]] = []

    async def handler(request: web.Request) -> web.Response:
        kept.append((SessionEnviron(request, translate_request), translate_request(request)))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/socket.io/", handler)
    async with TestServer(app) as server, aiohttp.ClientSession() as client:
        for agent in ("a", "b"):
            url = server.make_url("/socket.io/?EIO=4&transport=websocket")
            async with client.get(url, headers={"User-Agent": agent, "X-Forwarded-For": "10.0.0.1"}) as response:
                assert response.status == 200
    (first, built_first), (second, built_second) = kept
    for environ, built in ((first, built_first), (second, built_second), (first, built_first)):
        assert dict(environ.items()) == built and environ == built
        assert environ.get("HTTP_USER_AGENT") == built["HTTP_USER_AGENT"] and environ["RAW_URI"] == built["RAW_URI"]
        assert "HTTP_X_FORWARDED_FOR" in environ and "HTTP_COOKIE" not in environ
        assert environ.get("nothing", 5) == 5 and len(environ) == len(built) and list(environ) == list(built)
        assert environ.environ() is not environ.environ()  # a caller's copy to change
    assert first.get("HTTP_USER_AGENT") == "a" and second.get("HTTP_USER_AGENT") == "b"


async def test_connect_timeout_closes_only_sessions_that_never_joined(servers) -> None:
    """One timer checks every session's connect_timeout (RealtimeServer._sweep_joining): each
    session that joined no namespace is closed once its own timeout passed, sessions opened
    later too; a session that joined one stays."""
    import aiohttp

    srv = servers(env={"CONNECT_TIMEOUT": "1"})
    url = srv.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
    loop = asyncio.get_running_loop()

    async def closed_at(ws) -> float:
        async for _ in ws:
            pass
        return loop.time()

    async with aiohttp.ClientSession() as http:
        start = loop.time()
        idle = await http.ws_connect(url)
        joined = await http.ws_connect(url)
        for ws in (idle, joined):
            assert (await ws.receive_str()).startswith("0")
        await joined.send_str("40/chat,")
        assert (await joined.receive_str()).startswith("40/chat,")
        await asyncio.sleep(0.4)
        later = await http.ws_connect(url)
        assert (await later.receive_str()).startswith("0")
        first, second = await asyncio.wait_for(asyncio.gather(closed_at(idle), closed_at(later)), 5)
        assert 0.9 <= first - start <= 1.9 and 1.3 <= second - start <= 2.3, (first - start, second - start)
        await asyncio.sleep(0.5)
        assert not joined.closed
        await joined.close()


async def test_a_socket_recovers_on_another_node_when_its_node_dies_right_after_its_connect(
        servers, js, proxies, redis_url):
    """With Redis, a socket's session is saved just after its CONNECT (RealtimeServer._save_soon,
    batched with other sockets' in one pipeline): a node killed a moment later (no disconnect
    handler runs) leaves the session for the client to recover on another node."""
    env = {"REDIS_URL": redis_url, "PING_INTERVAL": "1", "PING_TIMEOUT": "1"}
    node1, node2 = servers(env=env), servers(env=env)
    proxy = await proxies([node1.port])
    first = await js.connect("s", proxy.url + "/chat", transports=["websocket"], auth={"name": "Kim"})
    me = await js.emit("s", "whoami")
    await asyncio.sleep(0.3)
    node1.kill()
    await js.call("waitDisconnects", name="s", count=1)
    proxy.up([node2.port])
    state = await js.call("waitConnects", name="s", count=2)
    assert state["recovered"] is True and state["sid"] == first["sid"], state
    assert await js.emit("s", "whoami") == me
    # Its user room routes to the dead node's tag (a guest minted there): node 2 follows that
    # route for it, so a direct message sent there now reaches it.
    await js.connect("t", f"http://127.0.0.1:{node2.port}/chat", transports=["websocket"])
    assert (await js.emit("t", "dm", {"to": me["user"], "text": "still there?"}))["ok"]
    assert [e["args"][0]["text"] for e in await js.wait("s", "dm")] == ["still there?"]


async def test_sockets_and_new_guests_need_no_subscription_of_their_own(servers, js, redis_url):
    """A socket's own room and a new guest's user room route to the node (realtime_channels.
    routes), whose route the node holds from its start: a connect storm subscribes no socket's
    or guest's channel (at most the route, when the monitor began before the node held it),
    and direct messages between the guests still arrive."""
    srv = servers(env={"REDIS_URL": redis_url})
    async with monitored(redis_url) as seen:
        names = [f"g{i}" for i in range(6)]
        sids = [(await js.connect(name, srv.url + "/chat", transports=["websocket"]))["sid"] for name in names]
        who = {name: await js.emit(name, "whoami") for name in names}
        for i, name in enumerate(names):
            to = who[names[(i + 1) % len(names)]]["user"]
            assert (await js.emit(name, "dm", {"to": to, "text": f"from {name}"}))["ok"]
        for i, name in enumerate(names):
            assert [e["args"][0]["text"] for e in await js.wait(name, "dm")] == [f"from {names[i - 1]}"]
    subscribed = [name for item in seen if item["command"].upper().startswith(("SUBSCRIBE ", "SSUBSCRIBE "))
                  for name in item["command"].split()[1:]]
    assert subscribed, "no subscription seen at all: the monitor saw nothing"
    routes = {n for n in subscribed if n.endswith(":route")}
    assert len(routes) <= 1, subscribed
    own = [w["user"] for w in who.values()] + sids
    assert all(len(sid) == 26 for sid in sids) and all(len(w["user"]) == 24 for w in who.values())
    assert not [n for n in subscribed if any(o in n for o in own)], subscribed


async def test_a_new_guests_user_room_is_followed_without_a_read_and_a_known_guests_with_one(
        servers, js, redis_url):
    """A guest minted by its CONNECT has a user room nobody could publish to yet: following it
    reads no position from the log (no HMGET of its channel's meta). A guest that comes back
    with its guest token may have direct messages there: its room's position is read. Both get
    a direct message sent right after they connected."""
    srv = servers(env={"REDIS_URL": redis_url})
    async with monitored(redis_url) as seen:
        await js.connect("old", srv.url + "/chat", transports=["websocket"])
        old = await js.emit("old", "whoami")
        await js.call("disconnect", name="old")
        await asyncio.sleep(1.5)  # its user room's channel is reaped (REAP_DELAY)
        before = len(seen)
        await js.connect("new", srv.url + "/chat", transports=["websocket"])
        new = await js.emit("new", "whoami")
        await js.connect("back", srv.url + "/chat", transports=["websocket"], auth={"guestToken": old["guestToken"]})
        assert (await js.emit("back", "whoami"))["user"] == old["user"]
        for name, to in (("back", new["user"]), ("new", old["user"])):
            assert (await js.emit(name, "dm", {"to": to, "text": "hi " + to}))["ok"]
        assert [e["args"][0]["text"] for e in await js.wait("new", "dm")] == ["hi " + new["user"]]
        assert [e["args"][0]["text"] for e in await js.wait("back", "dm")] == ["hi " + old["user"]]

    def reads_of(user: str) -> list[str]:
        # (The publish script's own HMGET of the meta, e o t, is not a position read.)
        # (Its meta key as channel_keys spells it: a minted guest's routes to its node.)
        meta = channel_keys("rt", f"/chat|user:{user}").meta
        commands = [item["command"] for item in seen[before:]]
        return [c for c in commands if c.startswith("HMGET ") and c.endswith(f"{meta} e o")]

    assert reads_of(new["user"]) == []
    assert len(reads_of(old["user"])) == 1


async def test_two_tabs_of_a_new_guest_both_get_its_direct_messages(servers, js, redis_url):
    """A new guest's user room is followed through the node's route without a cursor (its
    CONNECT minted the guest: nothing can be there yet). A second tab of that guest (its guest
    token) needs the room's cursor: opened from the start, so a direct message reaches both."""
    srv = servers(env={"REDIS_URL": redis_url})
    await js.connect("a", srv.url + "/chat", transports=["websocket"])
    me = await js.emit("a", "whoami")
    await js.connect("b", srv.url + "/chat", transports=["websocket"], auth={"guestToken": me["guestToken"]})
    assert (await js.emit("b", "whoami"))["user"] == me["user"]
    await js.connect("c", srv.url + "/chat", transports=["websocket"])
    for text in ("one", "two"):
        assert (await js.emit("c", "dm", {"to": me["user"], "text": text}))["ok"]
    for name in ("a", "b"):
        assert [e["args"][0]["text"] for e in await js.wait(name, "dm", count=2)] == ["one", "two"], name
