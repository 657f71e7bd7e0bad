"""/admin: the operators' namespace, speaking the Socket.IO Admin UI protocol.

Authentication: ``auth {username, password}`` checked against ``[admin]`` (or the
``ADMIN_USERNAME``/``ADMIN_PASSWORD`` environment), or ``auth {sessionId}`` from an earlier
login (the ``session`` event), so a reloaded UI page reconnects without asking again.
Wrong credentials give the connect error ``invalid credentials``, the message the UI expects.
A read-only operator sees everything and can change nothing.

Without a configured password the namespace refuses everyone.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
import socket
import time
from typing import Any

import socketio

from server.namespace import BaseNamespace

ADMIN_ROOM = "operators"
SESSION_TTL = 24 * 3600.0
FEATURES_RW = ["EMIT", "JOIN", "LEAVE", "DISCONNECT", "MJOIN", "MLEAVE", "MDISCONNECT",
               "AGGREGATED_EVENTS", "ALL_EVENTS"]
FEATURES_RO = ["AGGREGATED_EVENTS", "ALL_EVENTS"]


def hash_password(password: str, salt: bytes | None = None) -> str:
    """``scrypt$<salt hex>$<hash hex>``, the format ``admin.password_hash`` takes."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)
    return f"scrypt${salt.hex()}${digest.hex()}"


def check_password(password: str, stored_hash: str) -> bool:
    try:
        scheme, salt, digest = stored_hash.split("$")
        if scheme != "scrypt":
            return False
        return hmac.compare_digest(hash_password(password, bytes.fromhex(salt)), stored_hash)
    except ValueError:
        return False


class AdminNamespace(BaseNamespace):
    def __init__(self, namespace: str, runtime: Any) -> None:
        super().__init__(namespace, runtime)
        self.admin_sessions: dict[str, tuple[float, str]] = {}  # session id -> (expires, role)
        self.roles: dict[str, str] = {}

    async def start(self) -> None:
        self.runtime.background(self._stats_loop(), "admin-stats")

    def _role_for(self, auth: dict[str, Any]) -> str | None:
        cfg = self.config.admin
        username, password = auth.get("username"), auth.get("password")
        if isinstance(auth.get("sessionId"), str):
            item = self.admin_sessions.get(auth["sessionId"])
            if item is not None and item[0] > time.time():
                return item[1]
            return None
        if not isinstance(username, str) or not isinstance(password, str):
            return None
        if cfg.readonly_username and cfg.readonly_password and \
                hmac.compare_digest(username, cfg.readonly_username) and \
                hmac.compare_digest(password, cfg.readonly_password):
            return "readonly"
        if not hmac.compare_digest(username, cfg.username):
            return None
        if cfg.password_hash:
            return "admin" if check_password(password, cfg.password_hash) else None
        if cfg.password:
            return "admin" if hmac.compare_digest(password, cfg.password) else None
        return None

    async def on_connect(self, sid: str, environ: dict, auth: Any = None) -> None:
        role = self._role_for(auth if isinstance(auth, dict) else {})
        if role is None:
            raise socketio.exceptions.ConnectionRefusedError("invalid credentials")
        self.roles[sid] = role
        await self.enter_room(sid, ADMIN_ROOM)
        session_id = secrets.token_urlsafe(18)
        self.admin_sessions[session_id] = (time.time() + SESSION_TTL, role)
        asyncio.get_running_loop().call_soon(asyncio.ensure_future, self._greet(sid, session_id, role))

    async def _greet(self, sid: str, session_id: str, role: str) -> None:
        await self.emit("session", session_id, to=sid)
        await self.emit("config", {"supportedFeatures": FEATURES_RW if role == "admin" else FEATURES_RO}, to=sid)
        await self.emit("all_sockets", self._sockets(), to=sid)
        await self.emit("server_stats", self._stats(), to=sid)

    async def on_disconnect(self, sid: str, reason: str = "") -> None:
        self.roles.pop(sid, None)

    def _writable(self, sid: str) -> bool:
        return self.roles.get(sid) == "admin"

    def _sockets(self) -> list[dict[str, Any]]:
        out = []
        manager = self.server.manager
        for namespace in list(manager.get_namespaces()):
            for sid, eio_sid in list(manager.get_participants(namespace, None)):
                environ = self.server.environ.get(eio_sid, {})
                socket_ = self.server.eio.sockets.get(eio_sid)
                identity = self.runtime.identities.get((namespace, sid))
                out.append({
                    "id": sid, "clientId": eio_sid, "nsp": namespace,
                    "transport": "websocket" if socket_ is not None and socket_.upgraded else "polling",
                    "data": {"user": identity.user, "name": identity.name} if identity else {},
                    "rooms": [r for r in manager.get_rooms(sid, namespace)],
                    "handshake": {
                        "address": environ.get("HTTP_X_FORWARDED_FOR") or environ.get("REMOTE_ADDR", ""),
                        "headers": {k[5:].lower().replace("_", "-"): v for k, v in environ.items()
                                    if k.startswith("HTTP_") and k not in ("HTTP_COOKIE", "HTTP_AUTHORIZATION")},
                        "query": {}, "issued": 0, "secure": False, "time": "", "url": environ.get("PATH_INFO", ""),
                        "xdomain": "HTTP_ORIGIN" in environ,
                    },
                })
        return out

    def _stats(self) -> dict[str, Any]:
        manager = self.server.manager
        sockets = list(self.server.eio.sockets.values())
        return {
            "serverId": self.runtime.node_id, "hostname": socket.gethostname(), "pid": os.getpid(),
            "uptime": time.time() - self.runtime.started, "clientsCount": len(sockets),
            "pollingClientsCount": sum(1 for s in sockets if not s.upgraded),
            "aggregatedEvents": [],
            "namespaces": [{"name": ns, "socketsCount": len(list(manager.get_participants(ns, None)))}
                           for ns in list(manager.get_namespaces())],
        }

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(2)
            if self.roles:
                await self.emit("server_stats", self._stats(), room=ADMIN_ROOM)

    # ------------------------------------------------------------------ UI commands

    def _targets(self, namespace: Any, flt: Any) -> list[str]:
        if not isinstance(namespace, str):
            return []
        if flt is None:
            return [sid for sid, _ in self.server.manager.get_participants(namespace, None)]
        if isinstance(flt, str):
            return [sid for sid, _ in self.server.manager.get_participants(namespace, flt)]
        return []

    async def on_emit(self, sid: str, namespace: Any = None, flt: Any = None, event: Any = None, *args: Any) -> None:
        if not self._writable(sid) or not isinstance(namespace, str) or not isinstance(event, str):
            return
        await self.server.emit(event, tuple(args), to=flt, namespace=namespace)

    async def on_join(self, sid: str, namespace: Any = None, room: Any = None, flt: Any = None) -> None:
        if not self._writable(sid) or not isinstance(room, str):
            return
        for target in self._targets(namespace, flt):
            await self.server.enter_room(target, room, namespace=namespace)

    async def on_leave(self, sid: str, namespace: Any = None, room: Any = None, flt: Any = None) -> None:
        if not self._writable(sid) or not isinstance(room, str):
            return
        for target in self._targets(namespace, flt):
            await self.server.leave_room(target, room, namespace=namespace)

    async def on__disconnect(self, sid: str, namespace: Any = None, close: Any = False, flt: Any = None) -> None:
        if not self._writable(sid):
            return
        for target in self._targets(namespace, flt):
            await self.server.disconnect(target, namespace=namespace)

    async def trigger_event(self, event: str, *args: Any) -> Any:
        if event == "_disconnect":
            return await self.on__disconnect(*args)
        return await super().trigger_event(event, *args)


def create(runtime: Any) -> AdminNamespace:
    return AdminNamespace("/admin", runtime)
