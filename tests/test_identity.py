"""Identities and how a socket ends (issue #12), with the official JS client.

- Every server-initiated end of a socket (revoke, disconnect_user, token expiry, ...) goes
  through one place: a non-recoverable end forgets the saved session, and recovery by ``pid``
  re-checks the saved identity (not revoked, token not expired).
- A guest keeps its id only with the signed guest token the server issued, never by naming it.
- A token's ``rooms`` claim covers ``presence``; ``resume`` validates every room before acting.
"""

from __future__ import annotations

import asyncio
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
    ({"bad room!": {"seq": "0-0"}}, "invalid_room"),
    ({"r-last": {"seq": "not-an-offset"}}, "invalid_offset"),
    ({"general": {"seq": "0-0"}}, "forbidden"),
])
async def test_resume_with_one_bad_room_joins_none(node, js, bad, code):
    await js.connect("c", node.url + "/chat", transports=["websocket"],
                     auth={"token": token("carol", rooms=["r"])})
    rooms = {f"r{i}": {"seq": "0-0"} for i in range(50)}
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
    answer = await js.emit("c", "resume", {"rooms": {"x": {"seq": "0-0"}, "y": {"seq": "0-0"}}})
    assert answer["ok"] is False and answer["error"]["code"] == "too_many_rooms", answer
    assert (await js.emit("c", "presence", {"room": "x"}))["members"] == []
