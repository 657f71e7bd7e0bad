"""Identities and how a socket ends (issue #12), with the official JS client.

- Every server-initiated end of a socket (revoke, disconnect_user, token expiry, ...) goes
  through one place: a non-recoverable end forgets the saved session, and recovery by ``pid``
  re-checks the saved identity (not revoked, token not expired).
- A guest keeps its id only with the signed guest token the server issued, never by naming it.
- A token's ``rooms`` claim covers ``presence``; ``resume`` validates every room before acting.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Callable

import jwt
import pytest

SECRET = "identity-test-hmac-secret-of-32-bytes!!"
ADMIN = {"username": "admin", "password": "operator-pass-1"}
ENV = {"ADMIN_PASSWORD": ADMIN["password"]}


def token(user: str = "carol", **claims: Any) -> str:
    body = {"sub": user, "name": user.title(), "exp": time.time() + 600, "iat": time.time() - 1}
    body.update(claims)
    return jwt.encode(body, SECRET, algorithm="HS256", headers={"kid": "k1"})


def config_args(tmp_path, extra: str = "") -> list[str]:
    cfg = tmp_path / "identity.toml"
    cfg.write_text(f'[auth]\nleeway = 0\nkeys = [{{ kid = "k1", algorithm = "HS256", key = "{SECRET}" }}]\n{extra}')
    return ["--config", str(cfg)]


@pytest.fixture
def node(servers, tmp_path):
    """One node, embedded state, JWT keys (tokens optional on /chat) and an operator password."""
    return servers(env=ENV, args=config_args(tmp_path))


def internal(server, table: str) -> float:
    """An ``rt_internal_entries`` gauge of ``server``'s /metrics."""
    _, body = server.get("/metrics")
    prefix = f'rt_internal_entries{{table="{table}"}} '
    for line in body.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    return 0.0


async def until(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """Wait for ``check()`` to become true (a condition, not a duration)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def operator(js, server, name: str = "op") -> None:
    state = await js.connect(name, server.url + "/admin", transports=["websocket"], auth=ADMIN)
    assert state["connected"], state


async def recovery_ids(js, name: str) -> tuple[str, str | None]:
    """The ``pid`` and last offset socket.io-client keeps for connection state recovery."""
    value = (await js.call("eval", code=f"""
        const s = ctx.sockets.get({name!r}).socket;
        return [s._pid ?? null, s._lastOffset ?? null];"""))["value"]
    assert isinstance(value[0], str), value
    return value[0], value[1]


async def refusal(js, name: str) -> dict[str, Any]:
    """The first connect error of ``name`` that came from the server (not from the link being down)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        errors = [e for e in (await js.state(name))["errors"] if e["data"]]
        if errors:
            return errors[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name} was never refused by the server")


async def assert_not_restored(js, server, name: str, pid: str, offset: str | None, victim: str,
                              room: str = "hall") -> None:
    """A CONNECT presenting ``victim``'s old ``pid``/offset by hand gets a fresh session:
    another pid, not ``victim``'s identity, not in ``victim``'s rooms."""
    auth: dict[str, Any] = {"pid": pid}
    if offset is not None:
        auth["offset"] = offset
    state = await js.connect(name, server.url + "/chat", transports=["websocket"], auth=auth)
    assert state["connected"], state
    new_pid, _ = await recovery_ids(js, name)
    me = await js.emit(name, "whoami")
    assert me["user"] != victim, me
    assert new_pid != pid
    sent = await js.emit(name, "message", {"room": room, "text": "as the victim"})
    assert sent["ok"] is False and sent["error"]["code"] == "not_in_room", sent


# ---------------------------------------------------------------------- 1. how a socket ends


async def test_revoked_user_is_not_restored_by_the_old_pid(node, js):
    await operator(js, node)
    baseline = internal(node, "recovery_states")
    await js.connect("carol", node.url + "/chat", transports=["websocket"], auth={"token": token("carol")})
    assert (await js.emit("carol", "join", {"room": "hall"}))["ok"]
    pid, offset = await recovery_ids(js, "carol")

    assert (await js.emit("op", "revoke", {"user": "carol"}))["count"] == 1
    state = await js.call("waitDisconnects", name="carol", count=1)
    assert state["disconnects"] == ["io server disconnect"]
    await until(lambda: internal(node, "recovery_states") == baseline, "the recovery state of carol to go")

    await assert_not_restored(js, node, "thief", pid, offset, "carol")
    await js.call("close", name="thief")
    await until(lambda: internal(node, "recovery_states") == baseline and internal(node, "identities") == 0,
                "internal tables back to the operator alone")


async def test_disconnect_user_forgets_the_saved_sessions(servers, js, redis_server, redis_url, tmp_path):
    srv = servers(env={**ENV, "REDIS_URL": redis_url}, args=config_args(tmp_path))
    await operator(js, srv)
    await js.connect("dave", srv.url + "/chat", transports=["websocket"], auth={"token": token("dave")})
    await js.connect("dave2", srv.url + "/collab", transports=["polling"], auth={"token": token("dave")})
    assert (await js.emit("dave", "join", {"room": "hall"}))["ok"]
    pid, offset = await recovery_ids(js, "dave")
    assert redis_server.cli("EXISTS", f"rt:session:{pid}") == "1"  # saved on connect, for recovery

    assert (await js.emit("op", "disconnect_user", {"user": "dave"}))["count"] == 2
    for name in ("dave", "dave2"):
        state = await js.call("waitDisconnects", name=name, count=1)
        assert state["disconnects"] == ["io server disconnect"]
    await until(lambda: internal(srv, "recovery_states") == 0, "the recovery states of dave to go")
    # A deliberate disconnect is not recoverable: nothing of dave's is left to take over.
    assert redis_server.cli("KEYS", "rt:session:*") == ""

    await assert_not_restored(js, srv, "thief", pid, offset, "dave")
    await js.call("close", name="thief")
    await until(lambda: redis_server.cli("KEYS", "rt:session:*") == "", "the thief's session to be forgotten")
    await until(lambda: internal(srv, "recovery_states") == 0, "no recovery state left")


@pytest.mark.parametrize("close", [False, True], ids=["namespace", "whole-connection"])
async def test_operator_disconnect_forgets_the_saved_session(node, js, close):
    await operator(js, node)
    await js.connect("frank", node.url + "/chat", transports=["websocket"], auth={"token": token("frank")})
    assert (await js.emit("frank", "join", {"room": "hall"}))["ok"]
    pid, offset = await recovery_ids(js, "frank")
    sid = (await js.state("frank"))["sid"]
    # the Admin UI's _disconnect(namespace, close, filter)
    assert (await js.emit("op", "_disconnect", "/chat", close, sid))["count"] == 1
    await js.call("waitDisconnects", name="frank", count=1)
    await js.call("close", name="frank")  # a whole-connection close would be retried by the client
    await until(lambda: internal(node, "recovery_states") == 0, "the recovery state of frank to go")

    await assert_not_restored(js, node, "thief", pid, offset, "frank")


async def test_token_expiry_forgets_the_saved_session(node, js):
    await js.connect("erin", node.url + "/chat", transports=["websocket"],
                     auth={"token": token("erin", exp=time.time() + 2)})
    assert (await js.emit("erin", "join", {"room": "hall"}))["ok"]
    pid, offset = await recovery_ids(js, "erin")
    [expired] = await js.wait("erin", "session_expired", 1, timeout=8000)
    assert expired["args"][0]["code"] == "token_expired"
    await js.call("waitDisconnects", name="erin", count=1)
    await until(lambda: internal(node, "recovery_states") == 0, "the recovery state of erin to go")

    await assert_not_restored(js, node, "thief", pid, offset, "erin")


async def test_recovery_rechecks_revocation_made_while_disconnected(node, js, proxies):
    proxy = await proxies([node.port])
    await operator(js, node)
    await js.connect("carol", proxy.url + "/chat", transports=["websocket"], auth={"token": token("carol")})
    assert (await js.emit("carol", "join", {"room": "hall"}))["ok"]
    pid, offset = await recovery_ids(js, "carol")
    proxy.down()  # a network cut: recoverable, the session is kept
    await until(lambda: internal(node, "recovery_states") == 0, "the server to notice the cut")
    assert (await js.emit("op", "revoke", {"user": "carol"}))["count"] == 0

    await assert_not_restored(js, node, "thief", pid, offset, "carol")
    # carol's own client comes back with its token: refused, it was revoked
    proxy.up()
    error = await refusal(js, "carol")
    assert error["data"]["code"] == "token_revoked", error
    assert not (await js.state("carol"))["connected"]


async def test_recovery_rechecks_token_expiry_while_disconnected(node, js, proxies):
    proxy = await proxies([node.port])
    expires = time.time() + 3
    await js.connect("erin", proxy.url + "/chat", transports=["websocket"],
                     auth={"token": token("erin", exp=expires)})
    assert (await js.emit("erin", "join", {"room": "hall"}))["ok"]
    pid, offset = await recovery_ids(js, "erin")
    proxy.down()
    await until(lambda: internal(node, "recovery_states") == 0, "the server to notice the cut")
    await until(lambda: time.time() > expires + 0.5, "erin's token to expire")

    await assert_not_restored(js, node, "thief", pid, offset, "erin")
    proxy.up()
    error = await refusal(js, "erin")
    assert error["data"]["code"] == "token_expired", error


# ---------------------------------------------------------------------- 2. guests


async def test_a_guest_id_cannot_be_taken_over(servers, js):
    srv = servers(env={"DIRECT_RETRY_INTERVAL": "0.2"})
    await js.connect("victim", srv.url + "/chat", transports=["websocket"])
    me = await js.emit("victim", "whoami")
    victim = me["user"]
    assert me["guest"] and victim.startswith("guest-")
    # Guest ids are public (member lists show them): naming one proves nothing.
    await js.connect("thief", srv.url + "/chat", transports=["websocket"], auth={"guest": victim})
    thief = await js.emit("thief", "whoami")
    assert thief["user"] != victim and thief["user"].startswith("guest-")
    guest_token = me["guestToken"]
    assert isinstance(guest_token, str) and guest_token
    # Nor does the thief's own token with the victim's id pasted in, or made-up ones.
    forged = thief["guestToken"].replace(thief["user"], victim)
    for i, bad in enumerate((forged, victim, f"{victim}.1.abc", 42, {"user": victim})):
        await js.connect(f"forger{i}", srv.url + "/chat", transports=["websocket"], auth={"guestToken": bad})
        assert (await js.emit(f"forger{i}", "whoami"))["user"] != victim

    await js.connect("sender", srv.url + "/chat", transports=["websocket"])
    sent = await js.emit("sender", "dm", {"to": victim, "text": "for the victim only"})
    assert sent["ok"]
    [dm] = await js.wait("victim", "dm", 1)
    assert dm["args"][0]["text"] == "for the victim only"
    await js.wait("victim", "dm", 3)  # retried (no dm_ack yet): several rounds went out
    assert await js.events("thief", "dm") == []
    assert (await js.emit("thief", "dm_ack", {"ids": [sent["id"]]}))["acked"] == 0

    # The real guest, on a new connection with its token, keeps its id (and gets the DM).
    await js.call("close", name="victim")
    await js.connect("victim-again", srv.url + "/chat", transports=["websocket"], auth={"guestToken": guest_token})
    again = await js.emit("victim-again", "whoami")
    assert again["user"] == victim and again["guest"]
    [dm] = await js.wait("victim-again", "dm", 1)
    assert dm["args"][0]["id"] == sent["id"]
    assert (await js.emit("victim-again", "dm_ack", {"ids": [sent["id"]]}))["acked"] == 1
    # the same token works on every namespace
    await js.connect("victim-game", srv.url + "/game", transports=["polling"], auth={"guestToken": guest_token})
    assert (await js.emit("victim-game", "whoami"))["user"] == victim


async def test_guest_tokens_are_honoured_by_every_node_of_a_deployment(servers, js, redis_server, redis_url):
    n1, n2 = servers(env={"REDIS_URL": redis_url}), servers(env={"REDIS_URL": redis_url})
    await js.connect("g", n1.url + "/chat", transports=["websocket"])
    me = await js.emit("g", "whoami")
    # No guest_secret configured: the nodes share one created in Redis.
    await js.connect("g2", n2.url + "/chat", transports=["websocket"], auth={"guestToken": me["guestToken"]})
    assert (await js.emit("g2", "whoami"))["user"] == me["user"]


async def test_guest_secret_from_the_environment(servers, js):
    shared = {"GUEST_SECRET": "a-guest-secret-of-at-least-32-bytes!!"}
    n1, n2 = servers(env=shared), servers(env=shared)
    other = servers(env={"GUEST_SECRET": "another-guest-secret-of-32-bytes-or-more"})
    await js.connect("g", n1.url + "/chat", transports=["websocket"])
    me = await js.emit("g", "whoami")
    await js.connect("g2", n2.url + "/chat", transports=["websocket"], auth={"guestToken": me["guestToken"]})
    assert (await js.emit("g2", "whoami"))["user"] == me["user"]
    # a node with another secret cannot verify it: a new guest id
    await js.connect("g3", other.url + "/chat", transports=["websocket"], auth={"guestToken": me["guestToken"]})
    assert (await js.emit("g3", "whoami"))["user"] != me["user"]


def test_guest_secret_is_validated(tmp_path):
    from server.config import ConfigError, load_config

    short = tmp_path / "short.toml"
    short.write_text('[auth]\nguest_secret = "too short"\n')
    with pytest.raises(ConfigError, match=r"auth\.guest_secret .*at least 32 bytes"):
        load_config(short, environ={})
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    with pytest.raises(ConfigError, match=r"auth\.guest_secret \(from \$GUEST_SECRET\)"):
        load_config(empty, environ={"GUEST_SECRET": "short"})
    assert load_config(empty, environ={"GUEST_SECRET": "x" * 32}).auth.guest_secret == "x" * 32
    assert load_config(empty, environ={}).auth.guest_secret == ""


async def test_revoking_a_guest_voids_its_guest_token(node, js):
    await operator(js, node)
    await js.connect("g", node.url + "/chat", transports=["websocket"])
    me = await js.emit("g", "whoami")
    assert (await js.emit("op", "revoke", {"user": me["user"]}))["count"] == 1
    await js.call("waitDisconnects", name="g", count=1)
    await js.connect("g2", node.url + "/chat", transports=["websocket"], auth={"guestToken": me["guestToken"]})
    assert (await js.emit("g2", "whoami"))["user"] != me["user"]


# ---------------------------------------------------------------------- 3. presence and rooms claims


async def test_presence_honours_the_rooms_claim(node, js):
    await js.connect("other", node.url + "/chat", transports=["websocket"])
    assert (await js.emit("other", "join", {"room": "general"}))["ok"]
    await js.connect("c", node.url + "/chat", transports=["websocket"],
                     auth={"token": token("carol", rooms=["team-"])})
    assert (await js.emit("c", "join", {"room": "team-blue"}))["ok"]
    assert [m["user"] for m in (await js.emit("c", "presence", {"room": "team-blue"}))["members"]] == ["carol"]
    denied = await js.emit("c", "presence", {"room": "general"})
    assert denied["ok"] is False and denied["error"]["code"] == "forbidden", denied


# ---------------------------------------------------------------------- 4. resume validates first


@pytest.mark.parametrize("bad,code", [
    ({"bad room!": {"seq": 0}}, "invalid_room"),
    ({"r-last": {"seq": "not-an-offset"}}, "invalid_offset"),
    ({"general": {"seq": 0}}, "forbidden"),
])
async def test_resume_with_one_bad_room_joins_none(node, js, bad, code):
    await js.connect("c", node.url + "/chat", transports=["websocket"],
                     auth={"token": token("carol", rooms=["r"])})
    rooms = {f"r{i}": {"seq": 0} for i in range(50)}
    rooms.update(bad)
    answer = await js.emit("c", "resume", {"rooms": rooms})
    assert answer["ok"] is False and answer["error"]["code"] == code, answer
    # validate first, then act: not one of the 50 good rooms was joined
    for room in ("r0", "r49"):
        sent = await js.emit("c", "message", {"room": room, "text": "x"})
        assert sent["ok"] is False and sent["error"]["code"] == "not_in_room", (room, sent)
        assert (await js.emit("c", "presence", {"room": room}))["members"] == []


async def test_resume_counts_rooms_already_joined_against_the_limit(servers, js, tmp_path):
    srv = servers(args=config_args(tmp_path, "[limits]\nmax_rooms_per_socket = 3\n"))
    await js.connect("c", srv.url + "/chat", transports=["websocket"])
    for room in ("a", "b"):
        assert (await js.emit("c", "join", {"room": room}))["ok"]
    answer = await js.emit("c", "resume", {"rooms": {"x": {"seq": 0}, "y": {"seq": 0}}})
    assert answer["ok"] is False and answer["error"]["code"] == "too_many_rooms", answer
    assert (await js.emit("c", "presence", {"room": "x"}))["members"] == []


async def test_demo_pages_keep_a_guest_by_its_guest_token(server):
    """The pages keep the guest token (not the id) for reloads, and no URL names an id."""
    from playwright.async_api import async_playwright, expect
    from test_browser import ARGS, CHROMIUM, page_of

    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium is installed by make test")
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = await page_of(browser, server.url + "/chat.html")
            await expect(page.locator("#me")).to_contain_text("you are guest-")
            me = (await page.text_content("#me")).removeprefix("you are ")
            stored = await page.evaluate("[sessionStorage.getItem('guestToken'), sessionStorage.getItem('guest')]")
            assert stored[0] and stored[0].startswith(me + ".") and stored[1] is None, stored
            await page.reload()
            await expect(page.locator("#status")).to_have_text("connected")
            await expect(page.locator("#me")).to_have_text(f"you are {me}")
            # Another browser naming the id in the URL (the pages' old ?guest=) does not become it.
            other = await page_of(browser, server.url + f"/chat.html?guest={me}")
            await expect(other.locator("#me")).to_contain_text("you are guest-")
            assert await other.text_content("#me") != f"you are {me}"
            assert page.errors == [] and other.errors == []
        finally:
            await browser.close()
