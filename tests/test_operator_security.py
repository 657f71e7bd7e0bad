"""The operators' /admin against guessing (issue #12, item 2).

- Failed logins are throttled per client address and per username, each is logged (never the
  password), and a locked-out login is refused even with the right password until the lockout
  passes; scrypt hashing runs off the event loop, so guesses do not stall other clients.

Real parts: server processes, raw WebSocket clients from chosen loopback addresses, the
official socket.io-client.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

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


async def test_login_limits_are_validated(tmp_path):
    from server.config import ConfigError, load_config

    path = tmp_path / "ok.toml"
    path.write_text("[admin]\nlogin_attempts = 4\nlogin_lockout = 30\n")
    loaded = load_config(path, environ={})
    assert (loaded.admin.login_attempts, loaded.admin.login_lockout) == (4, 30.0)
    for text, message in (("[admin]\nlogin_attempts = 0\n", "admin.login_attempts (from"),
                          ("[admin]\nlogin_lockout = -1\n", "admin.login_lockout (from")):
        path.write_text(text)
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(path, environ={})
