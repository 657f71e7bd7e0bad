"""Publisher: the one way server-side code in this process (the HTTP API) publishes an event
to clients.

A durable namespace's event is published to the target room's channel through
:meth:`RealtimeManager.publish` — the same write a client's chat message makes — so it is
delivered in order by every node, carries its offset string as the last argument and is
recovered by the official JS client after a cut. Other namespaces emit as server code does.

``offset`` is the event's integer offset in its channel and ``epoch`` the channel's epoch: a
changed ``epoch`` means the history before it is gone.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .idempotency import PENDING, wait_for_ack

if TYPE_CHECKING:
    from .app import Runtime

# The Socket.IO room of an application room, per namespace (namespaces/chat.py, collab.py, game.py).
ROOM_PREFIX = {"/chat": "room:", "/collab": "doc:", "/game": "game:"}
# A claim whose publish died with the store unreachable lapses after this many seconds (as
# client eventIds do in server/namespace.py) rather than blocking retries for the whole window.
PENDING_TTL = 30.0


@dataclass(frozen=True)
class Target:
    """Who receives an event: the members of a room, one socket, or every connection of a user.

    :param kind: ``room`` (an application room name), ``sid`` (a socket id) or ``user`` (a user id).
    :param value: the room name, socket id or user id.
    """

    kind: Literal["room", "sid", "user"]
    value: str

    def socketio_room(self, namespace: str) -> str:
        """The Socket.IO room this target is in ``namespace``."""
        if self.kind == "room":
            return ROOM_PREFIX[namespace] + self.value
        if self.kind == "user":
            return "user:" + self.value
        return self.value  # every socket is in the room named by its sid


@dataclass(frozen=True)
class PublishResult:
    """:param offset: where the event is in its stream (None: a namespace without history).
    :param epoch: the stream's epoch (None likewise).
    :param duplicate: True when an earlier publish with the same idempotency key is answered
                      again and nothing was published now."""

    offset: str | None
    epoch: str | None
    duplicate: bool = False


class PublishConflict(Exception):
    """The idempotency key cannot be used now: still in progress, or used for another event."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def fingerprint(*parts: Any) -> str:
    """A digest of what is published, so a key reused for a different event is told apart."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


class Publisher:
    """:param runtime: this node's runtime (manager, event log, idempotency store, config)."""

    def __init__(self, runtime: "Runtime") -> None:
        self.runtime = runtime

    def durable(self, namespace: str) -> bool:
        return namespace in self.runtime.manager.durable

    async def publish(self, namespace: str, target: Target, event: str, args: list[Any],
                      idempotency_key: str | None = None) -> PublishResult:
        """Publish ``event(*args)`` to ``target`` in ``namespace``.

        :param idempotency_key: a key unique to the caller (e.g. ``api:<key name>:<id>``): within
            ``delivery.dedupe_ttl`` a second publish with it publishes nothing and returns the
            first result (``duplicate`` set).
        :raises PublishConflict: the key is being published right now (``in_progress``) or was
            used for a different event (``idempotency_key_reused``).
        """
        if idempotency_key is None:
            return await self._publish(namespace, target, event, args)
        store, ttl = self.runtime.stores.idempotency, self.runtime.config.delivery.dedupe_ttl
        digest = fingerprint(namespace, target.kind, target.value, event, args)
        fresh, stored = await store.claim(idempotency_key, min(ttl, PENDING_TTL))
        if not fresh and stored is PENDING:
            fresh, stored = await wait_for_ack(store, idempotency_key, ttl)
        if not fresh:
            if stored is PENDING:
                raise PublishConflict("in_progress", "a publish with this idempotency_key is still in progress")
            if not isinstance(stored, dict) or stored.get("fp") != digest:
                raise PublishConflict("idempotency_key_reused",
                                      "this idempotency_key was used for a different publish")
            self.runtime.metrics.dedupe_hits.labels(namespace).inc()
            return PublishResult(stored.get("offset"), stored.get("epoch"), duplicate=True)
        try:
            result = await self._publish(namespace, target, event, args)
        except BaseException:
            await store.release(idempotency_key)
            raise
        await store.complete(idempotency_key, {"offset": result.offset, "epoch": result.epoch, "fp": digest}, ttl)
        return result

    async def _publish(self, namespace: str, target: Target, event: str, args: list[Any]) -> PublishResult:
        room = target.socketio_room(namespace)
        if self.durable(namespace):
            # The publish a durable emit makes (RealtimeManager.emit): one write to the room's
            # channel, delivered in order by every node with members, recoverable.
            result = await self.runtime.manager.publish(namespace, room, event, list(args))
            return PublishResult(result.position.offset, result.position.epoch)
        await self.runtime.sio.emit(event, tuple(args), to=room, namespace=namespace)
        return PublishResult(None, None)
