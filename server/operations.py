"""Cluster-wide operations python-socketio only has per node (Node's fetchSockets,
socketsJoin, socketsLeave, disconnectSockets, serverSideEmit, and acks from a socket on
another node). Each runs on every live node through :class:`~server.cluster.Cluster` and
combines the answers; without Redis, on this node alone through the same handlers."""

from __future__ import annotations

import logging
import time
from typing import Any, Awaitable, Callable, Mapping

from .auth import Identity
from .cluster import Cluster
from .endings import DRAINED, ENDINGS, USER_DISCONNECTED, Ending
from .namespace import counted_rooms
from .realtime import RealtimeServer

log = logging.getLogger("server.operations")

ServerEventHandler = Callable[[Any], Awaitable[Any]]


class ClusterOperations:
    """The operations above, for the API, the Admin UI and server code.

    :param cluster: runs each operation on every live node (this one included) and answers
        the other nodes' requests here; its node id is the ``node`` of each serialized socket.
    :param sio: this node's Socket.IO server: the sockets an operation acts on here.
    :param identities: who each socket of this node is, by ``(namespace, sid)`` (read only).
    :param max_rooms_per_socket: ``limits.max_rooms_per_socket``: a cluster-wide join leaves
        out a socket already in that many rooms, as a client's own join would be refused.
    """

    def __init__(self, cluster: Cluster, sio: RealtimeServer, identities: Mapping[tuple[str, str], Identity],
                 max_rooms_per_socket: int) -> None:
        self.cluster = cluster
        self.sio = sio
        self.identities = identities
        self.max_rooms_per_socket = max_rooms_per_socket
        self.server_handlers: dict[str, ServerEventHandler] = {}
        cluster.handle("sockets", self._local_sockets)
        cluster.handle("sockets_op", self._local_op)
        cluster.handle("server_event", self._local_server_event)
        cluster.handle("call", self._local_call)

    # ------------------------------------------------------------------ public API

    async def fetch_sockets(self, namespace: str | None = None, room: str | None = None) -> list[dict[str, Any]]:
        """Every socket (of ``namespace``, in ``room``) on every node, with rooms and data."""
        out: list[dict[str, Any]] = []
        for answer in await self.cluster.gather("sockets", {"ns": namespace, "room": room}):
            if isinstance(answer, list):
                out.extend(s for s in answer if isinstance(s, dict))
        return out

    async def sockets_join(self, namespace: str, room: str, target: str | None = None) -> int:
        """Sockets of ``namespace`` matching ``target`` (a sid or room; None: all) join ``room``."""
        return await self._op({"op": "join", "ns": namespace, "room": room, "target": target})

    async def sockets_leave(self, namespace: str, room: str, target: str | None = None) -> int:
        return await self._op({"op": "leave", "ns": namespace, "room": room, "target": target})

    async def disconnect_sockets(self, namespace: str, target: str | None = None, close: bool = False,
                                 ending: Ending = USER_DISCONNECTED) -> int:
        """Disconnect matching sockets (``close``: their whole connection).

        :param ending: why (one of ``server.endings``, known to every node); its saved session
                       is forgotten unless the ending is recoverable.
        """
        return await self._op({"op": "disconnect", "ns": namespace, "target": target, "close": close,
                               "why": ending.reason})

    async def move_sockets(self) -> int:
        """Close every connection of this node recoverably (draining): clients reconnect elsewhere."""
        sio = self.sio
        sids = list(sio.eio.sockets)
        for eio_sid in sids:
            await sio.end(eio_sid, DRAINED)
        return len(sids)

    def on_server_event(self, event: str, handler: ServerEventHandler) -> None:
        """Answer :meth:`server_side_emit` of ``event`` on this node."""
        self.server_handlers[event] = handler

    async def server_side_emit(self, event: str, data: Any = None) -> list[Any]:
        """Deliver ``event`` to every node's handler; their answers (as serverSideEmitWithAck)."""
        answers = await self.cluster.gather("server_event", {"event": event, "data": data})
        return [a for a in answers if not isinstance(a, Exception)]

    async def call(self, sid: str, namespace: str, event: str, data: Any = None, timeout: float = 5.0) -> Any:
        """Emit to one socket, wherever it is connected, and return its ack."""
        for answer in await self.cluster.gather(
                "call", {"sid": sid, "ns": namespace, "event": event, "data": data, "timeout": timeout},
                timeout=timeout + 1):
            if isinstance(answer, dict) and answer.get("found"):
                return answer.get("ack")
        raise LookupError(f"no socket {sid} in {namespace}")

    # ------------------------------------------------------------------ local handlers

    async def _op(self, body: dict[str, Any]) -> int:
        answers = await self.cluster.gather("sockets_op", body)
        return sum(a for a in answers if isinstance(a, int))

    def _targets(self, namespace: Any, target: Any) -> list[str]:
        if not isinstance(namespace, str) or (target is not None and not isinstance(target, str)):
            return []
        return [sid for sid, _ in self.sio.manager.get_participants(namespace, target)]

    async def _local_sockets(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        sio = self.sio
        manager = sio.manager
        namespaces = [body["ns"]] if isinstance(body.get("ns"), str) else list(manager.get_namespaces())
        room = body.get("room") if isinstance(body.get("room"), str) else None
        out = []
        for namespace in namespaces:
            for sid, eio_sid in list(manager.get_participants(namespace, room)):
                if manager.is_connected(sid, namespace):
                    out.append(self.serialize(namespace, sid, eio_sid))
        return out

    def serialize(self, namespace: str, sid: str, eio_sid: str) -> dict[str, Any]:
        """A socket as the Admin UI's ``SerializedSocket`` (plus the node that holds it)."""
        sio = self.sio
        environ = sio.environ.get(eio_sid, {})
        socket = sio.eio.sockets.get(eio_sid)
        identity = self.identities.get((namespace, sid))
        connected_at = getattr(socket, "rt_connected_at", time.time())
        return {
            "id": sid, "clientId": eio_sid, "nsp": namespace, "node": self.cluster.node,
            "transport": "websocket" if socket is not None and socket.upgraded else "polling",
            "data": {"user": identity.user, "name": identity.name} if identity else {},
            "rooms": list(sio.manager.get_rooms(sid, namespace)),
            "handshake": {
                "address": (environ.get("HTTP_X_FORWARDED_FOR") or environ.get("REMOTE_ADDR", "")).split(",")[0],
                # Never secrets: cookies and authorization headers are left out.
                "headers": {k[5:].lower().replace("_", "-"): v for k, v in environ.items()
                            if k.startswith("HTTP_") and k not in ("HTTP_COOKIE", "HTTP_AUTHORIZATION")},
                "query": {}, "issued": int(connected_at * 1000), "secure": environ.get("wsgi.url_scheme") == "https",
                "time": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(connected_at)),
                "url": environ.get("RAW_URI", environ.get("PATH_INFO", "")), "xdomain": "HTTP_ORIGIN" in environ,
            },
        }

    async def _local_op(self, body: dict[str, Any]) -> int:
        sio = self.sio
        op, namespace, room, target = body.get("op"), body.get("ns"), body.get("room"), body.get("target")
        sids = self._targets(namespace, target)
        if op == "join" and isinstance(room, str):
            # The clients' room cap holds for operators' and the API's joins too: a socket
            # already in limits.max_rooms_per_socket rooms is left out (and not counted).
            limit = self.max_rooms_per_socket
            sids = [sid for sid in sids if room in (joined := counted_rooms(sio.manager.get_rooms(sid, namespace), sid))
                    or len(joined) < limit]
        for sid in sids:
            if op == "join" and isinstance(room, str):
                await sio.enter_room(sid, room, namespace=namespace)
            elif op == "leave" and isinstance(room, str):
                await sio.leave_room(sid, room, namespace=namespace)
            elif op == "disconnect":
                eio_sid = sio.manager.eio_sid_from_sid(sid, namespace)
                ending = ENDINGS.get(body.get("why"), USER_DISCONNECTED)  # type: ignore[arg-type]
                if eio_sid:
                    await sio.end(eio_sid, ending, None if body.get("close") else namespace)
        return len(sids)

    async def _local_server_event(self, body: dict[str, Any]) -> Any:
        handler = self.server_handlers.get(body.get("event"))  # type: ignore[arg-type]
        return None if handler is None else await handler(body.get("data"))

    async def _local_call(self, body: dict[str, Any]) -> dict[str, Any]:
        sio = self.sio
        sid, namespace, event = body.get("sid"), body.get("ns"), body.get("event")
        if not (isinstance(sid, str) and isinstance(namespace, str) and isinstance(event, str)):
            return {"found": False}
        if not sio.manager.is_connected(sid, namespace):
            return {"found": False}
        timeout = body.get("timeout") if isinstance(body.get("timeout"), (int, float)) else 5.0
        ack = await sio.call(event, body.get("data"), to=sid, namespace=namespace, timeout=timeout)
        return {"found": True, "ack": ack}

