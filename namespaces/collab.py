"""/collab: shared documents that converge (Yjs CRDT; pycrdt on the server).

A client opens a document and gets its whole state as one Yjs update; it sends its own
updates (also those made while offline) and receives everyone else's as durable events, so a
client that was cut off recovers them with connection state recovery. ``sync`` answers with
what a client lacks given its state vector. Awareness (cursors, selections) is volatile.

Yjs trusts client ids: an update written under another editor's id and next clock is taken
as that editor's, and that editor's real operations are then dropped as duplicates. So each
client id is bound to the user who first wrote with it in a document (in the document store,
shared by the nodes), and an update writing new operations under someone else's id is refused
with ``forbidden_client_id``, as is any id JavaScript numbers cannot hold (2^53 and above).
"""

from __future__ import annotations

import logging
from typing import Any

import pycrdt

from server.namespace import BaseNamespace, ClientError, ok, require_dict, require_room
from server.yupdate import ClientIdError, UpdateInfo, read_update

log = logging.getLogger("namespaces.collab")

COMPACT_AFTER = 200
MAX_UPDATE = 256 * 1024
# The document the editor page opens first, seeded (while it has no content at all) with a
# text telling a newcomer what to try. Written under a fixed Yjs client id, so two nodes seeding
# at once write the same operations (stored twice, merged once), and bound to an owner no
# client connects as, so nobody can write more under it.
WELCOME = "welcome"
SEED_CLIENT = 1
SEED_OWNER = "server:seed"
WELCOME_TEXT = (
    "Welcome to the shared editor!\n\n"
    "Open this page in a second window (or another browser) and type in both: the text merges as "
    "you go, and each window shows where the others' cursors and selections are, with their names "
    "(pick yours at the top).\n\n"
    "Then take one window offline (developer tools, Network, Offline), keep typing in both, and "
    "go back online: the edits merge, none is lost.\n\n"
    "Other documents: type a name above and Open; the list on the right keeps the ones you opened.\n"
)


class CollabNamespace(BaseNamespace):
    """The /collab namespace. Document ``d`` is the Socket.IO room ``doc:d``."""

    def __init__(self, namespace: str, runtime: Any) -> None:
        super().__init__(namespace, runtime)
        self.documents = runtime.stores.documents

    async def _state(self, doc: str) -> bytes:
        snapshot, updates = await self.documents.load(doc)
        parts = ([snapshot] if snapshot else []) + updates
        if not parts:
            return pycrdt.Doc().get_update()
        return pycrdt.merge_updates(*parts) if len(parts) > 1 else parts[0]

    def _doc(self, sid: str, payload: Any, joined: bool = True) -> str:
        doc = require_room(require_dict(payload).get("doc"))
        if joined and "doc:" + doc not in self.server.manager.get_rooms(sid, self.namespace):
            raise ClientError("not_open", f"open {doc} first")
        return doc

    async def on_open(self, sid: str, payload: Any = None) -> dict[str, Any]:
        doc = self._doc(sid, payload, joined=False)
        if not self.identity(sid).may_use_room(doc):
            raise ClientError("forbidden", f"your token does not allow document {doc}")
        await self.enter_room(sid, "doc:" + doc)
        if doc == WELCOME:
            await self._seed_welcome()
        return ok(doc=doc, update=await self._state(doc))

    async def _seed_welcome(self) -> None:
        """Write the welcome text into the welcome document if it has never had any content."""
        snapshot, updates = await self.documents.load(WELCOME)
        if snapshot or updates:
            return
        seed = pycrdt.Doc(client_id=SEED_CLIENT)
        seed["text"] = pycrdt.Text(WELCOME_TEXT)
        await self.documents.claim(WELCOME, [SEED_CLIENT], SEED_OWNER)
        await self.documents.append(WELCOME, seed.get_update())

    async def on_close(self, sid: str, payload: Any = None) -> dict[str, Any]:
        doc = self._doc(sid, payload)
        await self.leave_room(sid, "doc:" + doc)
        return ok(doc=doc)

    async def on_update(self, sid: str, payload: Any = None) -> dict[str, Any]:
        payload = require_dict(payload)
        doc = self._doc(sid, payload)
        update = payload.get("update")
        if not isinstance(update, (bytes, bytearray)) or not update:
            raise ClientError("invalid_update", "update must be a non-empty binary Yjs update")
        if len(update) > MAX_UPDATE:
            raise ClientError("update_too_large", f"updates are limited to {MAX_UPDATE} bytes")
        update = bytes(update)
        try:
            info = read_update(update)
            pycrdt.Doc().apply_update(update)
        except ClientIdError as exc:
            raise ClientError("forbidden_client_id", str(exc)) from None
        except Exception:
            raise ClientError("invalid_update", "not a Yjs update") from None
        user = self.identity(sid).user
        fresh = await self._authorized(doc, user, update, info)
        if fresh is None:
            return ok(doc=doc)  # nothing the document does not have already
        count = await self.documents.append(doc, fresh)
        await self.emit("update", {"doc": doc, "update": fresh, "user": user},
                        room="doc:" + doc, skip_sid=sid)
        if count >= COMPACT_AFTER:
            await self._compact(doc)
        return ok(doc=doc)

    async def _authorized(self, doc: str, user: str, update: bytes, info: UpdateInfo) -> bytes | None:
        """The part of ``update`` to store: all of it when every client id it writes is
        ``user``'s, else only what the document lacks (a client re-sending its whole state
        carries others' known operations). None when nothing is new.

        :raises ClientError: ``forbidden_client_id`` when new operations are written under a
            client id bound to another user (or one another user binds at the same moment).
        """
        owners = await self.documents.owners(doc, info.writes)
        if any(owners[client] != user for client in info.writes):
            known = pycrdt.get_state(await self._state(doc))
            try:
                update = pycrdt.get_update(update, known)
                info = read_update(update)
            except Exception:
                raise ClientError("invalid_update", "not a Yjs update") from None
        foreign = [c for c in info.writes if owners[c] not in (None, user)]
        unbound = [c for c in info.writes if owners[c] is None]
        if unbound and not foreign:
            claimed = await self.documents.claim(doc, unbound, user)
            foreign = [c for c in unbound if claimed[c] != user]
        if foreign:
            log.info("refused an update to %s from %s: Yjs client id %d is another user's", doc, user, foreign[0])
            raise ClientError("forbidden_client_id",
                              f"Yjs client id {foreign[0]} belongs to another editor of this document")
        if not info.writes and not info.deletes:
            return None
        return update

    async def _compact(self, doc: str) -> None:
        snapshot, updates = await self.documents.load(doc)
        parts = ([snapshot] if snapshot else []) + updates
        try:
            await self.documents.compact(doc, pycrdt.merge_updates(*parts), len(updates))
        except Exception as exc:
            log.warning("compaction of %s failed: %s", doc, exc)

    async def on_sync(self, sid: str, payload: Any = None) -> dict[str, Any]:
        """``sync {doc, stateVector}`` → ``{ok, update}`` with what the client lacks."""
        payload = require_dict(payload)
        doc = self._doc(sid, payload)
        vector = payload.get("stateVector")
        if not isinstance(vector, (bytes, bytearray)):
            raise ClientError("invalid_state_vector", "stateVector must be binary")
        server_doc = pycrdt.Doc()
        server_doc.apply_update(await self._state(doc))
        try:
            diff = server_doc.get_update(bytes(vector))
        except Exception:
            raise ClientError("invalid_state_vector", "not a Yjs state vector") from None
        return ok(doc=doc, update=diff)

    async def on_awareness(self, sid: str, payload: Any = None) -> None:
        payload = require_dict(payload)
        doc = self._doc(sid, payload)
        state = payload.get("state")
        if not isinstance(state, dict) or len(str(state)) > 2048:
            raise ClientError("invalid_awareness", "state must be a small object")
        identity = self.identity(sid)
        await self.server.emit("awareness", {"doc": doc, "user": identity.user, "name": identity.name,
                                             "state": state}, room="doc:" + doc, skip_sid=sid,
                               namespace=self.namespace, volatile=True)
        return None


def create(runtime: Any) -> CollabNamespace:
    return CollabNamespace("/collab", runtime)
