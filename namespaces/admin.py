"""/admin: the operators' namespace, speaking the Socket.IO Admin UI protocol.

Authentication: ``auth {username, password}`` checked against ``[admin]`` (or the
``ADMIN_USERNAME``/``ADMIN_PASSWORD`` environment), or ``auth {sessionId}`` from an earlier
login (the ``session`` event), so a reloaded UI page reconnects without asking again.
Wrong credentials give the connect error ``invalid credentials``, the message the UI expects.
A read-only operator sees everything and can change nothing.

Without a configured password the namespace refuses everyone.

Failed logins are counted per client address and per operator username (``admin.login_attempts``
within ``admin.login_lockout``; shared by the nodes with Redis); past the limit every attempt
from that address or for that username gets ``too many attempts``, the right password too,
until the lockout passes. Each failure is logged (never the password). scrypt runs in a thread
of its own, so guesses cannot stall the event loop. A refused operator command is logged and
counted (``rt_operator_commands_refused_total``): the Admin UI shows no error acks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import logging
import os
import secrets
import signal
import socket
import time
from typing import Any

import socketio
from redis.exceptions import RedisError

from server.endings import REVOKED, USER_DISCONNECTED, Ending
from server.scrypt_hash import scrypt_hash, scrypt_matches
from server.namespace import BaseNamespace, ClientError, ok, require_dict, require_room, user_room
from server.room_history import read_history

log = logging.getLogger("namespaces.admin")
FORBIDDEN = ClientError("forbidden", "read-only operators cannot change anything").ack()

ADMIN_ROOM = "operators"
SESSION_TTL = 24 * 3600.0
FEATURES_RW = ["EMIT", "JOIN", "LEAVE", "DISCONNECT", "MJOIN", "MLEAVE", "MDISCONNECT",
               "AGGREGATED_EVENTS", "ALL_EVENTS"]
FEATURES_RO = ["AGGREGATED_EVENTS", "ALL_EVENTS"]
# Refused operator commands logged one by one per second at most; the rest are summed up in
# the next line (the metric counts every one).
REFUSALS_LOGGED_PER_SECOND = 20


# The stored form of an operator password (``admin.password_hash``), and its check.
hash_password = scrypt_hash
check_password = scrypt_matches


class AdminNamespace(BaseNamespace):
    def __init__(self, namespace: str, runtime: Any) -> None:
        super().__init__(namespace, runtime)
        self.roles: dict[str, str] = {}
        self.throttle = self.stores.login_throttle
        # One thread: password hashing never takes more than one core, and never the event loop.
        self._hasher = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="admin-scrypt")
        self._refusals_window = 0.0
        self._refusals_logged = 0
        self._refusals_unlogged = 0

    async def start(self) -> None:
        self.runtime.background(self._stats_loop(), "admin-stats")
        self.runtime.cluster.handle("drain", self._drain_here)
        self.runtime.cluster.handle("revoke", self._revoke_here)

    async def _remember(self, session_id: str, role: str) -> None:
        # Shared with Redis, so a reloaded UI page that reaches another node is still logged in.
        await self.stores.operator_sessions.remember(session_id, role, SESSION_TTL)

    async def _recall(self, session_id: str) -> str | None:
        if len(session_id) > 64:
            return None
        return await self.stores.operator_sessions.recall(session_id)

    async def _role_for(self, auth: dict[str, Any]) -> str | None:
        cfg = self.config.admin
        username, password = auth.get("username"), auth.get("password")
        if not isinstance(username, str) or not isinstance(password, str):
            return None
        if cfg.readonly_username and cfg.readonly_password and \
                _same(username, cfg.readonly_username) and _same(password, cfg.readonly_password):
            return "readonly"
        if not _same(username, cfg.username):
            return None
        if cfg.password_hash:
            matches = await asyncio.get_running_loop().run_in_executor(
                self._hasher, check_password, password, cfg.password_hash)
            return "admin" if matches else None
        if cfg.password:
            return "admin" if _same(password, cfg.password) else None
        return None

    def _throttle_keys(self, address: str, auth: dict[str, Any]) -> list[str]:
        """What a login attempt counts against: its client address and, when it names one of
        the configured operators, that username (unknown names are not worth a counter each)."""
        keys = [f"addr:{address}"]
        username = auth.get("username")
        cfg = self.config.admin
        if "sessionId" not in auth and isinstance(username, str) and \
                username in {cfg.username, cfg.readonly_username} - {""}:
            keys.append(f"user:{username}")
        return keys

    async def on_connect(self, sid: str, environ: dict, auth: Any = None) -> None:
        auth = auth if isinstance(auth, dict) else {}
        address = _client_address(environ)
        keys = self._throttle_keys(address, auth)
        try:
            count = await self.throttle.reserve(keys)
        except (RedisError, OSError) as exc:
            log.warning("operator login refused: login throttle unavailable: %s", exc)
            raise socketio.exceptions.ConnectionRefusedError("temporarily unavailable") from None
        if count is None:
            self.metrics.operator_logins.labels("locked").inc()
            raise socketio.exceptions.ConnectionRefusedError("too many attempts")
        if isinstance(auth.get("sessionId"), str):
            role = await self._recall(auth["sessionId"])
        else:
            role = await self._role_for(auth)
        if role is None:
            self.metrics.operator_logins.labels("failed").inc()
            limit = self.config.admin.login_attempts
            who = "with an unknown session id" if isinstance(auth.get("sessionId"), str) \
                else f"for {str(auth.get('username'))[:64]!r}"
            locked = f"; locked out for {self.config.admin.login_lockout:g} s" if count >= limit else ""
            log.warning("operator login failed %s from %s (failure %d of %d%s)", who, address, count, limit, locked)
            raise socketio.exceptions.ConnectionRefusedError("invalid credentials")
        await self.throttle.release(keys)
        self.metrics.operator_logins.labels("ok").inc()
        self.roles[sid] = role
        await self.enter_room(sid, ADMIN_ROOM)
        session_id = secrets.token_urlsafe(18)
        await self._remember(session_id, role)
        asyncio.get_running_loop().call_soon(asyncio.ensure_future, self._greet(sid, session_id, role))

    async def _greet(self, sid: str, session_id: str, role: str) -> None:
        await self.emit("session", session_id, to=sid)
        await self.emit("config", {"supportedFeatures": FEATURES_RW if role == "admin" else FEATURES_RO}, to=sid)
        await self.emit("all_sockets", [s for s in await self.runtime.operations.fetch_sockets()
                                        if s["nsp"] != self.namespace], to=sid)
        await self.emit("server_stats", self._stats(), to=sid)

    async def on_disconnect(self, sid: str, reason: str = "") -> None:
        self.roles.pop(sid, None)

    def _writable(self, sid: str) -> bool:
        return self.roles.get(sid) == "admin"

    def _stats(self) -> dict[str, Any]:
        manager = self.server.manager
        sockets = list(self.server.eio.sockets.values())
        return {
            "serverId": self.runtime.node_id, "hostname": socket.gethostname(), "pid": os.getpid(),
            "uptime": time.time() - self.runtime.started, "clientsCount": len(sockets),
            "pollingClientsCount": sum(1 for s in sockets if not s.upgraded),
            "aggregatedEvents": self._aggregated(),
            "namespaces": [{"name": ns, "socketsCount": sum(1 for sid, _ in manager.get_participants(ns, None)
                                                           if manager.is_connected(sid, ns))}
                           for ns in list(manager.get_namespaces())],
        }

    def _aggregated(self) -> list[dict[str, Any]]:
        """Counts since the last report, as the UI's AGGREGATED_EVENTS feature expects."""
        m = self.metrics
        now = {"rawConnection": _total(m.connects), "packetsIn": _total(m.events_in),
               "packetsOut": _total(m.deliveries), "bytesIn": _total(m.bytes_in)}
        previous, self._last_counts = getattr(self, "_last_counts", {}), now
        stamp = int(time.time() * 1000)
        return [{"timestamp": stamp, "type": k, "count": int(v - previous.get(k, 0))}
                for k, v in now.items() if v - previous.get(k, 0) > 0]

    async def _stats_loop(self) -> None:
        if not self._enabled():
            # No operator can log in (no password configured on this node): nobody to report to,
            # and each report walks every socket.
            return
        while True:
            await asyncio.sleep(2)
            # Every node reports; with Redis the emit reaches operators on every node.
            await self.emit("server_stats", self._stats(), room=ADMIN_ROOM)

    # ------------------------------------------------------------------ live socket events

    async def socket_connected(self, namespace: str, sid: str) -> None:
        if namespace == self.namespace or not self._enabled():
            return
        eio_sid = self.server.manager.eio_sid_from_sid(sid, namespace)
        if eio_sid is None:
            return
        await self.emit("socket_connected", (self.runtime.operations.serialize(namespace, sid, eio_sid),
                                             int(time.time() * 1000)), room=ADMIN_ROOM)

    async def socket_disconnected(self, namespace: str, sid: str, reason: str) -> None:
        if namespace == self.namespace or not self._enabled():
            return
        await self.emit("socket_disconnected", (namespace, sid, reason, int(time.time() * 1000)), room=ADMIN_ROOM)

    def _enabled(self) -> bool:
        cfg = self.config.admin
        return bool(cfg.password or cfg.password_hash or cfg.readonly_password)

    # ------------------------------------------------------------------ UI commands (cluster-wide)

    async def on_emit(self, sid: str, namespace: Any = None, target: Any = None, event: Any = None,
                      *args: Any) -> Any:
        if not self._writable(sid):
            return FORBIDDEN
        if not isinstance(namespace, str) or not isinstance(event, str):
            return ClientError("invalid_arguments", "emit(namespace, filter, event, ...args)").ack()
        await self.server.emit(event, tuple(args), to=target if isinstance(target, str) else None,
                               namespace=namespace)
        return ok()

    async def on_join(self, sid: str, namespace: Any = None, room: Any = None, target: Any = None) -> Any:
        if not self._writable(sid):
            return FORBIDDEN
        if not isinstance(namespace, str) or not isinstance(room, str):
            return ClientError("invalid_arguments", "join(namespace, room, filter)").ack()
        return ok(count=await self.runtime.operations.sockets_join(namespace, room, _target(target)))

    async def on_leave(self, sid: str, namespace: Any = None, room: Any = None, target: Any = None) -> Any:
        if not self._writable(sid):
            return FORBIDDEN
        if not isinstance(namespace, str) or not isinstance(room, str):
            return ClientError("invalid_arguments", "leave(namespace, room, filter)").ack()
        return ok(count=await self.runtime.operations.sockets_leave(namespace, room, _target(target)))

    async def on__disconnect(self, sid: str, namespace: Any = None, close: Any = False, target: Any = None) -> Any:
        if not self._writable(sid):
            return FORBIDDEN
        if not isinstance(namespace, str):
            return ClientError("invalid_arguments", "_disconnect(namespace, close, filter)").ack()
        return ok(count=await self.runtime.operations.disconnect_sockets(namespace, _target(target), bool(close)))

    async def handle_event(self, event: str, *args: Any) -> Any:
        if event in ("connect", "disconnect"):
            return await super().handle_event(event, *args)
        sid = args[0] if args else None
        # Commands of one operator connection already run one at a time, in the order sent
        # (RealtimeSocket handles a connection's events in arrival order).
        result = await self._command(event, *args)
        if isinstance(result, dict) and result.get("ok") is False:
            self.command_refused(sid, event, str(result.get("error", {}).get("code")))
        return result

    async def _command(self, event: str, *args: Any) -> Any:
        handler = self.on__disconnect if event == "_disconnect" else getattr(self, "on_" + event, None)
        if handler is None:
            return ClientError("unknown_event", f"no event {event!r} in /admin").ack()
        try:
            return await handler(*args)
        except ClientError as exc:
            return exc.ack()
        except TypeError:
            return ClientError("invalid_arguments", f"wrong arguments for {event!r}").ack()
        except (RedisError, OSError) as exc:
            log.warning("/admin %s failed, store unavailable: %s", event, exc)
            return ClientError("unavailable", "temporarily unavailable, retry").ack()

    def command_refused(self, sid: str | None, event: Any, code: str) -> None:
        """An operator command was refused (by a handler, or before it by the operator rate
        limit or the size cap): the Admin UI never shows the error ack, so log and count it."""
        self.metrics.operator_refused.labels(code).inc()
        now = time.monotonic()
        if now - self._refusals_window >= 1.0:
            if self._refusals_unlogged:
                log.warning("%d more operator commands refused in the last second", self._refusals_unlogged)
            self._refusals_window, self._refusals_logged, self._refusals_unlogged = now, 0, 0
        if self._refusals_logged >= REFUSALS_LOGGED_PER_SECOND:
            self._refusals_unlogged += 1
            return
        self._refusals_logged += 1
        role = self.roles.get(sid, "operator") if sid else "operator"
        log.warning("operator command refused: %r from %s %s: %s", str(event)[:64], role, sid, code)

    # ------------------------------------------------------------------ operator commands

    async def on_sockets(self, sid: str, payload: Any = None) -> dict[str, Any]:
        """``sockets {namespace?, room?}`` → every matching socket on every node."""
        payload = payload if isinstance(payload, dict) else {}
        namespace = payload.get("namespace") if isinstance(payload.get("namespace"), str) else None
        room = payload.get("room") if isinstance(payload.get("room"), str) else None
        return ok(sockets=await self.runtime.operations.fetch_sockets(namespace, room))

    async def on_nodes(self, sid: str, payload: Any = None) -> dict[str, Any]:
        """``nodes`` → live nodes with address, connections, version, draining."""
        return ok(nodes=sorted(await self.runtime.cluster.nodes(), key=lambda n: n["node"]))

    async def on_drain(self, sid: str, payload: Any = None) -> dict[str, Any]:
        """``drain {node}``: that node stops accepting, moves its clients (they recover on the
        other nodes), then exits."""
        if not self._writable(sid):
            return FORBIDDEN
        node = require_dict(payload).get("node")
        if not isinstance(node, str):
            raise ClientError("invalid_node", "node must be a node id (see nodes)")
        if node not in {n["node"] for n in await self.runtime.cluster.nodes()}:
            raise ClientError("no_such_node", f"no live node {node}")
        answer = await self.runtime.cluster.call("drain", {}, node=node)
        if isinstance(answer, Exception):
            raise ClientError("drain_failed", str(answer))
        return ok(node=node, moved=answer)

    async def on_disconnect_user(self, sid: str, payload: Any = None) -> dict[str, Any]:
        """``disconnect_user {user}``: every connection of the user, on every node, every namespace."""
        if not self._writable(sid):
            return FORBIDDEN
        user = require_dict(payload).get("user")
        if not isinstance(user, str) or not user:
            raise ClientError("invalid_user", "user must be a user id")
        return ok(count=await self._disconnect_user(user, USER_DISCONNECTED))

    async def _disconnect_user(self, user: str, ending: Ending) -> int:
        count = 0
        for namespace in ("/chat", "/game", "/collab"):
            count += await self.runtime.operations.disconnect_sockets(namespace, user_room(user), ending=ending)
        return count

    async def on_announce(self, sid: str, payload: Any = None) -> dict[str, Any]:
        """``announce {namespace, message}``: event ``announcement {message, ts}`` to everyone there."""
        if not self._writable(sid):
            return FORBIDDEN
        payload = require_dict(payload)
        namespace, message = payload.get("namespace"), payload.get("message")
        if namespace not in ("/chat", "/game", "/collab"):
            raise ClientError("invalid_namespace", "namespace must be /chat, /game or /collab")
        if not isinstance(message, str) or not 1 <= len(message) <= 2000:
            raise ClientError("invalid_message", "message must be 1-2000 characters")
        await self.server.emit("announcement", {"message": message, "ts": int(time.time() * 1000)},
                               namespace=namespace)
        return ok()

    async def on_room(self, sid: str, payload: Any = None) -> dict[str, Any]:
        """``room {room, limit?}``: a chat room's recent history and who is present."""
        payload = require_dict(payload)
        room = require_room(payload.get("room"))
        limit = payload.get("limit", 50)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 200:
            raise ClientError("invalid_limit", "limit must be from 1 to 200")
        messages = (await read_history(self.runtime.manager.log, room, limit=limit)).messages
        members = await self.stores.presence.members("/chat", room)
        return ok(room=room, messages=messages, members=[m.__dict__ for m in members])

    async def on_revoke(self, sid: str, payload: Any = None) -> dict[str, Any]:
        """``revoke {user}``: the user's tokens issued until now stop working on every node, and
        the user's connections are closed."""
        if not self._writable(sid):
            return FORBIDDEN
        user = require_dict(payload).get("user")
        if not isinstance(user, str) or not user:
            raise ClientError("invalid_user", "user must be a user id")
        await self.runtime.cluster.gather("revoke", {"user": user})
        return ok(count=await self._disconnect_user(user, REVOKED))

    async def _drain_here(self, body: dict[str, Any]) -> int:
        self.runtime.cluster.draining = True
        self.server.shutting_down = True  # new namespace connections are refused
        moved = await self.runtime.operations.move_sockets()
        log.warning("drained by an operator: moved %d connections, exiting", moved)
        asyncio.get_running_loop().call_later(0.5, os.kill, os.getpid(), signal.SIGTERM)
        return moved

    async def _revoke_here(self, body: dict[str, Any]) -> bool:
        user = body.get("user")
        if isinstance(user, str):
            self.runtime.authenticator.revoke(user)
        return True


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison; as bytes, since ``compare_digest`` refuses non-ASCII str."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


def _client_address(environ: dict) -> str:
    """The peer address of the request that opened the session (python-engineio's aiohttp
    driver sets REMOTE_ADDR to 127.0.0.1 for everyone)."""
    return getattr(environ.get("aiohttp.request"), "remote", None) or environ.get("REMOTE_ADDR", "")


def _target(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _total(counter: Any) -> float:
    return sum(sample.value for metric in counter.collect() for sample in metric.samples
               if sample.name.endswith("_total"))


def create(runtime: Any) -> AdminNamespace:
    return AdminNamespace("/admin", runtime)
