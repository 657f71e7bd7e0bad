"""The operators' /admin against guessing and overload (issue #12, items 2 and 3).

- Failed logins are throttled per client address and per username, each is logged (never the
  password), and a locked-out login is refused even with the right password until the lockout
  passes; scrypt hashing runs off the event loop, so guesses do not stall other clients.
- Operator connections have their own event limits, and a refused operator command (the
  Admin UI has no error path) is logged and counted on /metrics.

Real parts: server processes, raw WebSocket clients from chosen loopback addresses, the
official socket.io-client, nginx over two nodes on Redis.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from harness import Nginx
from namespaces.admin import hash_password
from test_delivery import metric

ADMIN_PASSWORD = "right-pass-123"
VIEWER = {"username": "viewer", "password": "viewer-pass-1"}


def config(tmp_path: Path, text: str) -> list[str]:
    """``--config`` arguments for a TOML file with ``text``."""
    path = tmp_path / "config.toml"
    path.write_text(text)
    return ["--config", str(path)]


class RawSession:
    """One Engine.IO session over a raw WebSocket, from a chosen loopback address (the server
    sees it as the client address)."""

    def __init__(self, url: str, local: str = "127.0.0.1") -> None:
        self.url = url
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(local, 0)))
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def open(self) -> "RawSession":
        self.ws = await self.http.ws_connect(self.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket")
        first = await self.ws.receive_str(timeout=5)
        assert first.startswith("0"), first
        return self

    async def send_connect(self, auth: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send_str("40/admin," + json.dumps(auth))

    async def connect_result(self) -> str:
        """``ok`` for a CONNECT reply, else the connect error's message."""
        assert self.ws is not None
        while True:
            data = await self.ws.receive_str(timeout=30)
            if data == "2":
                await self.ws.send_str("3")
            elif data.startswith("40/admin,"):
                return "ok"
            elif data.startswith("44/admin,"):
                return json.loads(data[len("44/admin,"):])["message"]

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        await self.http.close()


async def login(url: str, auth: dict[str, Any], local: str = "127.0.0.1") -> str:
    """One /admin login on a fresh connection: ``ok`` or the connect error's message."""
    session = await RawSession(url, local).open()
    try:
        await session.send_connect(auth)
        return await session.connect_result()
    finally:
        await session.close()


def admin(password: str) -> dict[str, str]:
    return {"username": "admin", "password": password}


# ---------------------------------------------------------------------- item 2: logins


LOCKOUT = """
[admin]
password = "%s"
readonly_username = "viewer"
readonly_password = "viewer-pass-1"
login_attempts = 3
login_lockout = 2.0
""" % ADMIN_PASSWORD


async def test_failed_logins_lock_out_the_username_even_with_the_right_password(servers, tmp_path):
    srv = servers(args=config(tmp_path, LOCKOUT))
    for i in range(3):
        assert await login(srv.url, admin(f"wrong-guess-{i}"), "127.0.0.2") == "invalid credentials"
    # the fourth attempt is refused before the password is looked at, the right one too
    assert await login(srv.url, admin(ADMIN_PASSWORD), "127.0.0.2") == "too many attempts"
    # from another address as well: the username is locked
    assert await login(srv.url, admin(ADMIN_PASSWORD), "127.0.0.3") == "too many attempts"
    # another operator from that other address is not affected
    assert await login(srv.url, VIEWER, "127.0.0.3") == "ok"

    log = srv.output()
    failures = [line for line in log.splitlines() if "operator login failed" in line]
    assert len(failures) == 3, log
    assert all("'admin'" in line and "127.0.0.2" in line for line in failures), failures
    assert "wrong-guess" not in log and ADMIN_PASSWORD not in log
    assert metric(srv, 'rt_operator_logins_total{result="failed"}') == 3
    assert metric(srv, 'rt_operator_logins_total{result="locked"}') == 2

    # once the lockout has passed, the right password works again
    for _ in range(100):
        result = await login(srv.url, admin(ADMIN_PASSWORD), "127.0.0.3")
        if result == "ok":
            break
        assert result == "too many attempts"
        await asyncio.sleep(0.1)
    assert result == "ok"


async def test_failed_logins_lock_out_the_address_whatever_they_try(servers, tmp_path):
    srv = servers(args=config(tmp_path, LOCKOUT))
    # unknown usernames (non-ASCII ones too) and made-up session ids count against the address
    assert await login(srv.url, {"username": "root", "password": "toor"}, "127.0.0.4") == "invalid credentials"
    assert await login(srv.url, {"username": "g\u00e4st", "password": "p\u00e4ss"}, "127.0.0.4") == "invalid credentials"
    assert await login(srv.url, {"sessionId": "made-up-session"}, "127.0.0.4") == "invalid credentials"
    assert await login(srv.url, {"username": "r\u00f6\u00f6t", "password": "p\u00e4ss"}, "127.0.0.4") == "too many attempts"
    assert await login(srv.url, admin(ADMIN_PASSWORD), "127.0.0.4") == "too many attempts"
    assert await login(srv.url, VIEWER, "127.0.0.4") == "too many attempts"
    # the username was not the one guessed: the operator logs in from elsewhere
    assert await login(srv.url, admin(ADMIN_PASSWORD), "127.0.0.5") == "ok"
    assert len([line for line in srv.output().splitlines() if "operator login failed" in line]) == 3


async def test_failed_logins_count_on_every_node_with_redis(servers, redis_url, tmp_path):
    args = config(tmp_path, LOCKOUT)
    n1, n2 = servers(env={"REDIS_URL": redis_url}, args=args), servers(env={"REDIS_URL": redis_url}, args=args)
    # a successful login does not count: the viewer comes and goes as it likes
    for _ in range(4):
        assert await login(n1.url, VIEWER, "127.0.0.6") == "ok"
    assert await login(n1.url, admin("wrong-1"), "127.0.0.2") == "invalid credentials"
    assert await login(n2.url, admin("wrong-2"), "127.0.0.2") == "invalid credentials"
    assert await login(n1.url, admin("wrong-3"), "127.0.0.7") == "invalid credentials"
    # three failures for "admin" across the nodes: locked on both, from any address
    assert await login(n2.url, admin(ADMIN_PASSWORD), "127.0.0.6") == "too many attempts"
    assert await login(n1.url, admin(ADMIN_PASSWORD), "127.0.0.8") == "too many attempts"
    assert await login(n2.url, VIEWER, "127.0.0.6") == "ok"
    for _ in range(100):
        result = await login(n2.url, admin(ADMIN_PASSWORD), "127.0.0.6")
        if result == "ok":
            break
        await asyncio.sleep(0.1)
    assert result == "ok"


async def test_scrypt_guesses_do_not_stall_other_clients(servers, js, tmp_path):
    hashed = hash_password(ADMIN_PASSWORD)
    srv = servers(args=config(tmp_path, f'[admin]\npassword_hash = "{hashed}"\nlogin_attempts = 100\n'))
    await js.connect("bystander", srv.url + "/chat", transports=["websocket"])
    guesses = 12  # each scrypt check takes tens of milliseconds of CPU
    sessions = [await RawSession(srv.url).open() for _ in range(guesses)]
    answered: list[str] = []

    async def answer(session: RawSession) -> None:
        answered.append(await session.connect_result())

    try:
        for i, session in enumerate(sessions):
            await session.send_connect(admin(f"guess-{i}"))
        readers = [asyncio.create_task(answer(s)) for s in sessions]
        # The bystander's event arrives after every guess: with the hashing on the event loop
        # its ack waited for all of them.
        ack = await js.emit("bystander", "whoami")
        assert ack["ok"]
        await asyncio.sleep(0.05)  # let replies that have arrived be read
        assert len(answered) < guesses, "the bystander's ack came only after every guess was checked"
        await asyncio.gather(*readers)
        assert answered == ["invalid credentials"] * guesses
    finally:
        for session in sessions:
            await session.close()
    assert await login(srv.url, admin(ADMIN_PASSWORD)) == "ok"


# ---------------------------------------------------------------------- item 3: operator limits


EMIT_1000 = """
const s = ctx.sockets.get('op').socket;
for (let i = 0; i < 1000; i++) s.emit('emit', '/chat', null, 'notice', { i });
return true;
"""


async def operator_emits_1000(js, names: list[str], url: str, **opts: Any) -> None:
    """An operator at ``url`` sends 1000 Admin UI ``emit`` commands at once (as the UI does:
    no waiting, no ack looked at); every client in ``names`` must get every event."""
    state = await js.connect("op", url + "/admin", transports=["websocket"], auth=admin(ADMIN_PASSWORD), **opts)
    assert state["connected"], state
    await js.call("eval", code=EMIT_1000)
    for name in names:
        events = await js.wait(name, "notice", 1000, timeout=60000)
        assert sorted({e["args"][0]["i"] for e in events}) == list(range(1000)), name


async def test_an_operator_emits_1000_events_to_clients_on_two_nodes(servers, js, redis_url):
    env = {"REDIS_URL": redis_url, "ADMIN_PASSWORD": ADMIN_PASSWORD}
    n1, n2 = servers(env=env), servers(env=env)
    clients = {"p1": (n1, "polling"), "w1": (n1, "websocket"), "p2": (n2, "polling"), "w2": (n2, "websocket")}
    for name, (node, transport) in clients.items():
        assert (await js.connect(name, node.url + "/chat", transports=[transport]))["connected"]
    # the client limit (50/s, burst 100) no longer applies to the operator's connection
    await operator_emits_1000(js, list(clients), n1.url)
    assert metric(n1, "rt_operator_commands_refused_total") == 0
    assert metric(n1, "rt_rate_limited_total") == 0


async def test_an_operator_reaches_polling_clients_through_round_robin_nginx(servers, js, redis_url):
    env = {"REDIS_URL": redis_url, "ADMIN_PASSWORD": ADMIN_PASSWORD}
    n1, n2 = servers(env=env), servers(env=env)
    lb = Nginx([n1.port, n2.port]).start()
    try:
        origin = {"extraHeaders": {"Origin": f"http://127.0.0.1:{lb.port}"}}
        names = [f"c{i}" for i in range(4)]
        for name in names:
            assert (await js.connect(name, lb.url + "/chat", transports=["polling"], **origin))["connected"]
        # Long polls relayed to the session's node used to come back gzipped (the relay asked
        # for it) to clients that had not asked and could not read them: "transport error".
        await operator_emits_1000(js, names, lb.url, **origin)
        for name in names:
            assert (await js.state(name))["disconnects"] == [], name
    finally:
        lb.stop()


LIMITED = """
[admin]
password = "%s"
readonly_username = "viewer"
readonly_password = "viewer-pass-1"

[limits]
operator_events_per_second = 0.1
operator_event_burst = 2
""" % ADMIN_PASSWORD


async def test_refused_operator_commands_are_logged_and_counted(servers, js, tmp_path):
    srv = servers(args=config(tmp_path, LIMITED))
    await js.connect("u", srv.url + "/chat", transports=["websocket"])
    await js.connect("viewer", srv.url + "/admin", transports=["websocket"], auth=VIEWER)
    ack = await js.emit("viewer", "emit", "/chat", None, "notice", {"from": "viewer"})
    assert ack["ok"] is False and ack["error"]["code"] == "forbidden"
    await js.connect("op", srv.url + "/admin", transports=["websocket"], auth=admin(ADMIN_PASSWORD))
    # without waiting for acks, as the Admin UI: 2 pass (the burst), 3 are over the limit
    await js.call("eval", code="""
        const s = ctx.sockets.get('op').socket;
        for (let i = 0; i < 5; i++) s.emit('emit', '/chat', null, 'notice', { i });
        return true;""")
    assert len(await js.wait("u", "notice", 2)) == 2
    for _ in range(50):
        if metric(srv, 'rt_operator_commands_refused_total{code="rate_limited"}') == 3:
            break
        await asyncio.sleep(0.1)
    assert metric(srv, 'rt_operator_commands_refused_total{code="rate_limited"}') == 3
    assert metric(srv, 'rt_operator_commands_refused_total{code="forbidden"}') == 1
    lines = [line for line in srv.output().splitlines() if "operator command refused" in line]
    assert len([line for line in lines if "rate_limited" in line and "'emit'" in line]) == 3, lines
    assert len([line for line in lines if "forbidden" in line and "readonly" in line and "'emit'" in line]) == 1, lines
    assert [e["args"][0]["i"] for e in await js.events("u", "notice")] == [0, 1]


async def test_operator_limits_are_validated(tmp_path):
    from server.config import ConfigError, load_config

    path = tmp_path / "ok.toml"
    path.write_text("[admin]\nlogin_attempts = 4\nlogin_lockout = 30\n"
                    "[limits]\noperator_events_per_second = 500\noperator_event_burst = 800\n")
    loaded = load_config(path, environ={})
    assert (loaded.admin.login_attempts, loaded.admin.login_lockout) == (4, 30.0)
    assert (loaded.limits.operator_events_per_second, loaded.limits.operator_event_burst) == (500.0, 800)
    for text, message in (("[limits]\noperator_events_per_second = 0\n", "limits.operator_events_per_second (from"),
                          ("[limits]\noperator_event_burst = 'many'\n", "limits.operator_event_burst (from"),
                          ("[admin]\nlogin_attempts = 0\n", "admin.login_attempts (from"),
                          ("[admin]\nlogin_lockout = -1\n", "admin.login_lockout (from")):
        path.write_text(text)
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(path, environ={})
