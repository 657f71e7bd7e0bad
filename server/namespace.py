"""BaseNamespace: what every application namespace shares.

- Authentication on CONNECT (a JWT in ``auth.token``, or a guest identity kept by
  ``auth.guestToken``), saved with the socket's session so connection state recovery restores it
  (after checking it was not revoked and has not expired meanwhile).
- Every socket joins the room ``user:<id>`` so messages to a user reach all their connections.
- Client event IDs: an event whose first argument is an object with ``eventId`` (a string of at
  most 128 characters) is applied once; a retry with the same ID gets the first ack again.
- Handlers raise :class:`ClientError` for bad input; the client gets an error ack
  ``{"ok": false, "error": {"code", "message"}}`` and nothing else changes.
- Token renewal: the ``auth`` event presents a fresh token for the same user.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import TYPE_CHECKING, Any, Iterable

import socketio

from .adapter import NamespaceAdapter
from .auth import AuthError, Identity
from .endings import TOKEN_EXPIRED
from .idempotency import PENDING, TOO_LARGE, wait_for_ack

if TYPE_CHECKING:
    from .app import Runtime

log = logging.getLogger("server.namespace")

ROOM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
EVENT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
PENDING_TTL = 30.0


class ClientError(Exception):
    """Bad input from a client; becomes an error ack, never a crash or a disconnect."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def ack(self) -> dict[str, Any]:
        return {"ok": False, "error": {"code": self.code, "message": self.message}}


def ok(**fields: Any) -> dict[str, Any]:
    return {"ok": True, **fields}


def require_room(value: Any) -> str:
    if not isinstance(value, str) or not ROOM_NAME.match(value):
        raise ClientError("invalid_room", "room names are 1-64 characters: letters, digits, _ . : - "
                          "(starting with a letter or digit)")
    return value


def require_dict(value: Any, what: str = "payload") -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ClientError("invalid_payload", f"{what} must be an object")
    return value


class BaseNamespace(NamespaceAdapter):
    """A namespace of this server.

    :param namespace: its name, e.g. ``/chat``.
    :param runtime: the shared runtime (config, stores, authenticator, metrics).
    """

    def __init__(self, namespace: str, runtime: "Runtime") -> None:
        super().__init__(namespace)
        self.runtime = runtime
        # sid -> identity, for the sockets whose token expires (guests' never do), so the
        # once-a-second expiry check does not walk every connection.
        self._expiring: dict[str, Identity] = {}
        self.config = runtime.config
        self.stores = runtime.stores
        self.metrics = runtime.metrics
        self.auth = runtime.authenticator
        # event name -> its bound ``on_*`` method, filled as events arrive (the name mangling
        # and getattr once per event name, not once per event).
        self._handlers: dict[str, Any] = {}

    # ------------------------------------------------------------------ dispatch

    async def handle_event(self, event: str, *args: Any) -> Any:
        if event in ("connect", "disconnect"):
            return await self.library_trigger_event(event, *args)
        handler = self._handlers.get(event)
        if handler is None:
            handler = self._handler_for(event)
            if handler is None:
                # An unknown event with an ack still gets an answer, so the client is not left waiting.
                return ClientError("unknown_event", f"no event {event!r} in {self.namespace}").ack()
        sid, data = args[0], args[1:]
        try:
            # The event-ID check inline (this runs for every event): only an object first
            # argument holding "eventId" goes on to the dedupe.
            if data and isinstance(data[0], dict) and "eventId" in data[0]:
                return await self._once(handler, sid, event, data)
            return await handler(sid, *data)
        except ClientError as exc:
            return exc.ack()
        except TypeError as exc:
            # Wrong number of arguments from the client.
            log.info("bad arguments for %s from %s: %s", event, sid, exc)
            return ClientError("invalid_arguments", f"wrong arguments for {event!r}").ack()
        # Anything else (shared state unreachable included) is answered by the server in one
        # place: RealtimeServer._handler_failed (unavailable / internal error acks).

    def _handler_for(self, event: str) -> Any:
        """The ``on_*`` method for ``event`` (None for none, or a name starting with ``_``),
        remembered for the known ones; unknown names are not remembered (clients choose them)."""
        if event.startswith("_"):
            return None
        handler = getattr(self, "on_" + event.replace(":", "_").replace("-", "_"), None)
        if handler is not None:
            self._handlers[event] = handler
        return handler

    async def _once(self, handler: Any, sid: str, event: str, data: tuple[Any, ...]) -> Any:
        """Run ``handler`` for ``event`` once per event ID (``data[0]["eventId"]``): a retry,
        even while the first is still running, gets the first one's ack."""
        event_id = data[0]["eventId"]
        if not isinstance(event_id, str) or not EVENT_ID.match(event_id):
            raise ClientError("invalid_event_id", "eventId must be 1-128 characters: letters, digits, _ . : -")
        identity = self.runtime.identities.get((self.namespace, sid))
        key = f"{self.namespace}:{identity.user if identity else sid}:{event}:{event_id}"
        store, ttl = self.stores.idempotency, self.config.delivery.dedupe_ttl
        sync = store.sync  # the memory store: its calls are plain calls, not coroutines
        # A claim whose handler died with the store unreachable cannot be released: it lapses
        # after PENDING_TTL rather than blocking retries for the whole dedupe window.
        if sync:
            fresh, ack = store.claim_now(key, ttl if ttl < PENDING_TTL else PENDING_TTL)
        else:
            fresh, ack = await store.claim(key, min(ttl, PENDING_TTL))
        if not fresh and ack is PENDING:
            fresh, ack = await wait_for_ack(store, key, ttl)
        if not fresh:
            self.metrics.dedupe_hits.labels(self.namespace).inc()
            if ack is PENDING:
                return ClientError("in_progress", "an event with this eventId is still being processed").ack()
            if ack is TOO_LARGE:
                # Its ack was over dedupe_max_reply_bytes, so it was not kept for replaying.
                return ClientError("reply_too_large", "an event with this eventId was already applied; "
                                   "its reply is too large to be sent again").ack()
            return ack
        try:
            result = await handler(sid, *data)
        except ClientError as exc:
            # A refused event is recorded too: the retry must get the same answer.
            await store.complete(key, exc.ack(), ttl)
            raise
        except BaseException:
            await store.release(key)
            raise
        if sync:
            store.complete_now(key, result, ttl)
        else:
            await store.complete(key, result, ttl)
        return result

    # ------------------------------------------------------------------ connect / disconnect

    async def on_connect(self, sid: str, environ: dict, auth: Any = None) -> None:
        auth = auth if isinstance(auth, dict) else {}
        recovered = self.server.is_recovered(sid, self.namespace)
        previous = None
        if recovered:
            # The identity its restored session holds; from now on runtime.identities holds it,
            # and saved_state puts it in every save of the session.
            session = await self.get_session(sid)
            previous = Identity.from_dict(session.pop("identity", None))
        try:
            if previous is not None and "token" not in auth and not self.auth.requires_token(self.namespace):
                identity = previous
            else:
                identity = self.auth.authenticate(self.namespace, auth)
                if previous is not None and identity.user != previous.user:
                    raise AuthError("token is for another user than the session", "forbidden")
        except AuthError as exc:
            # The JS client gets err.message and err.data (here {code}).
            raise socketio.exceptions.ConnectionRefusedError(str(exc), {"code": exc.code}) from None
        self._set_identity(sid, identity)
        # Straight to the manager: AsyncNamespace.enter_room, AsyncServer.enter_room and
        # AsyncManager.enter_room only hand it on (three coroutines per connect).
        await self.server.manager.enter(sid, self.namespace, user_room(identity.user),
                                        fresh=previous is None and new_guest(identity, auth))
        await self.connected(sid, identity, recovered, auth)
        admin = self.runtime.namespaces.get("/admin")
        if admin is not None:
            await admin.socket_connected(self.namespace, sid)

    def saved_state(self, sid: str) -> dict[str, Any]:
        """What a socket's saved session holds besides its python-socketio session (called by
        RealtimeServer at each save): its identity, which recovery restores (see
        :meth:`may_recover`). Kept once per socket, in runtime.identities, not also as a
        dict in its session."""
        identity = self.runtime.identities.get((self.namespace, sid))
        return {} if identity is None else {"identity": identity.to_dict()}

    def may_recover(self, data: dict[str, Any]) -> bool:
        """Whether a saved session (its data, ``data``) may be restored by its ``pid``: it names an
        identity that is not revoked and whose token has not expired since. Called by
        RealtimeServer before recovery; a refused client connects afresh."""
        identity = Identity.from_dict(data.get("identity"))
        return identity is not None and self.auth.still_valid(identity)

    async def on_disconnect(self, sid: str, reason: str = "") -> None:
        identity = self.runtime.identities.pop((self.namespace, sid), None)
        self._expiring.pop(sid, None)
        if identity is not None:
            await self.disconnected(sid, identity, reason)
            admin = self.runtime.namespaces.get("/admin")
            if admin is not None:
                await admin.socket_disconnected(self.namespace, sid, reason)

    async def expire_sessions(self) -> None:
        """Disconnect sockets whose token expired without renewal: event ``session_expired
        {code: "token_expired"}`` first, so the client knows to get a new token and reconnect."""
        while True:
            await asyncio.sleep(1.0)
            now = time.time()
            for sid, identity in list(self._expiring.items()):
                if identity.expires is not None and identity.expires + self.config.auth.leeway < now:
                    # Sent directly (not through the log) so it is queued before the DISCONNECT.
                    await self.server.emit("session_expired", {"code": "token_expired",
                                                               "message": "token expired; reconnect with a new token"},
                                           to=sid, namespace=self.namespace, volatile=True)
                    self._expiring.pop(sid, None)
                    await self.server.disconnect(sid, self.namespace, ending=TOKEN_EXPIRED)

    def _set_identity(self, sid: str, identity: Identity) -> None:
        self.runtime.identities[(self.namespace, sid)] = identity
        if identity.expires is None:
            self._expiring.pop(sid, None)
        else:
            self._expiring[sid] = identity

    async def connected(self, sid: str, identity: Identity, recovered: bool, auth: dict[str, Any]) -> None:
        """Hook: a socket joined (or recovered into) this namespace; ``auth`` is its CONNECT payload."""

    async def disconnected(self, sid: str, identity: Identity, reason: str) -> None:
        """Hook: a socket left this namespace."""

    # ------------------------------------------------------------------ helpers

    def identity(self, sid: str) -> Identity:
        identity = self.runtime.identities.get((self.namespace, sid))
        if identity is None:
            raise ClientError("not_connected", "not connected")
        return identity

    def rooms_of(self, sid: str) -> list[str]:
        return counted_rooms(self.server.manager.get_rooms(sid, self.namespace), sid)

    async def on_whoami(self, sid: str, payload: Any = None) -> dict[str, Any]:
        """``whoami`` → ``{ok, user, name, guest, expires}``, and ``guestToken`` for a guest (its
        proof of the id: connect with ``auth {guestToken}`` to keep it), and ``notice`` when the
        guest credential of the connect was not honoured (why this is a new guest id)."""
        identity = self.identity(sid)
        answer = ok(user=identity.user, name=identity.name, guest=identity.guest, expires=identity.expires)
        if identity.guest:
            answer["guestToken"] = self.auth.guest_token(identity)
        if identity.notice:
            answer["notice"] = identity.notice
        return answer

    async def on_auth(self, sid: str, payload: Any = None) -> dict[str, Any]:
        """Token renewal without reconnecting: ``auth {token}`` → ``{ok, expires}``."""
        payload = require_dict(payload)
        current = self.identity(sid)
        try:
            fresh = self.auth.verify(payload.get("token"), self.namespace)
        except AuthError as exc:
            raise ClientError(exc.code, str(exc)) from None
        if fresh.user != current.user:
            raise ClientError("forbidden", "token is for another user")
        self._set_identity(sid, fresh)  # what the socket's saved session will hold (saved_state)
        return ok(expires=fresh.expires)


def new_guest(identity: Identity, auth: dict[str, Any]) -> bool:
    """Whether ``identity`` is a guest id this CONNECT minted (no guest token of it was
    presented; see Authenticator.guest): nobody knows it yet, so nothing was ever published
    to its user room, and following that room reads no position from the log."""
    if not identity.guest:
        return False
    token = auth.get("guestToken")
    return not (isinstance(token, str) and token.startswith(identity.user + "."))


def user_room(user: str) -> str:
    return f"user:{user}"


def counted_rooms(rooms: Iterable[Any], sid: str) -> list[str]:
    """Of a socket's rooms, those that count against ``limits.max_rooms_per_socket``: not its
    own room, not its user's. One rule for clients' joins, operators' and the API's."""
    return [r for r in rooms if isinstance(r, str) and r != sid and not r.startswith("user:")]
