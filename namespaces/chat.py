"""/chat: durable, ordered, at-least-once chat.

Rooms with presence, messages with server-assigned IDs, timestamps and per-room sequence
positions, room history from the event log, volatile typing indicators, and direct messages
to a user that are retried until one of the user's connections acknowledges them.
Every event a client sends may carry ``eventId`` (see ``server.namespace``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

from realtime_channels.channel_log import StreamPosition, check_idempotency_key
from server.namespace import BaseNamespace, ClientError, ok, require_dict, require_room, user_room
from server.pending import PendingMessage
from server.presence import Member
from server.room_history import message_of, read_history, room_channel

log = logging.getLogger("namespaces.chat")

MAX_TEXT = 4000
MAX_HISTORY = 200
# The presence entry that stands for a connection gone away but still recoverable.
AWAY = "away:"
MAX_SEQ = (1 << 53) - 1  # what a JavaScript number holds exactly


def _seq(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SEQ:
        raise ClientError("invalid_offset", f"{name} must be a seq: an integer >= 0, as received")
    return value


def _text(payload: dict[str, Any]) -> str:
    text = payload.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ClientError("invalid_text", "text must be a non-empty string")
    if len(text) > MAX_TEXT:
        raise ClientError("text_too_long", f"text is limited to {MAX_TEXT} characters")
    return text


class ChatNamespace(BaseNamespace):
    """The /chat namespace. Room ``r`` is the Socket.IO room ``room:r``."""

    async def start(self) -> None:
        self.runtime.background(self._heartbeat(), "chat-presence")
        self.runtime.background(self._retry_direct(), "chat-direct-retry")

    # ------------------------------------------------------------------ rooms

    async def on_join(self, sid: str, payload: Any = None) -> dict[str, Any]:
        room = require_room(require_dict(payload).get("room"))
        identity = self.identity(sid)
        if not identity.may_use_room(room):
            raise ClientError("forbidden", f"your token does not allow room {room}")
        if len(self.rooms_of(sid)) >= self.config.limits.max_rooms_per_socket and \
                "room:" + room not in self.rooms_of(sid):
            raise ClientError("too_many_rooms", f"at most {self.config.limits.max_rooms_per_socket} rooms")
        await self.enter_room(sid, "room:" + room)
        first = await self.stores.presence.join(self.namespace, room, sid, Member(identity.user, identity.name),
                                                self.config.delivery.presence_ttl)
        if first:
            await self.emit("presence", {"room": room, "user": identity.user, "name": identity.name,
                                         "action": "join"}, room="room:" + room)
        position = await self.runtime.manager.log.position(room_channel(room))
        members = await self.stores.presence.members(self.namespace, room)
        return ok(room=room, members=[m.__dict__ for m in members], seq=position.offset, epoch=position.epoch)

    async def on_leave(self, sid: str, payload: Any = None) -> dict[str, Any]:
        room = require_room(require_dict(payload).get("room"))
        await self.leave_room(sid, "room:" + room)
        await self._presence_leave(room, sid)
        return ok(room=room)

    async def _presence_leave(self, room: str, sid: str) -> None:
        member = await self.stores.presence.leave(self.namespace, room, sid)
        if member is not None:
            await self.emit("presence", {"room": room, "user": member.user, "name": member.name,
                                         "action": "leave"}, room="room:" + room)

    async def on_presence(self, sid: str, payload: Any = None) -> dict[str, Any]:
        room = require_room(require_dict(payload).get("room"))
        if not self.identity(sid).may_use_room(room):
            raise ClientError("forbidden", f"your token does not allow room {room}")
        members = await self.stores.presence.members(self.namespace, room)
        return ok(room=room, members=[m.__dict__ for m in members])

    # ------------------------------------------------------------------ messages

    async def on_message(self, sid: str, payload: Any = None) -> dict[str, Any]:
        payload = require_dict(payload)
        room = require_room(payload.get("room"))
        text = _text(payload)
        if "room:" + room not in self.server.manager.get_rooms(sid, self.namespace):
            raise ClientError("not_in_room", f"join {room} before sending to it")
        identity = self.identity(sid)
        message = {"id": secrets.token_hex(8), "room": room, "user": identity.user, "name": identity.name,
                   "text": text, "ts": int(time.time() * 1000)}
        # Written once, to the room's channel: its seq is its offset there (set by each receiver
        # from the publication: the "seq" stamp), and history is the channel's history. A retry
        # with the same eventId publishes nothing and gets the first seq.
        key = self._message_key(identity.user, payload.get("eventId"))
        result = await self.runtime.manager.publish(self.namespace, "room:" + room, "message", [message],
                                                    stamp="seq", idempotency_key=key)
        return ok(id=message["id"], seq=result.position.offset, epoch=result.position.epoch, ts=message["ts"])

    @staticmethod
    def _message_key(user: str, event_id: Any) -> str | None:
        if not isinstance(event_id, str):
            return None
        try:
            return check_idempotency_key(f"message:{user}:{event_id}")
        except ValueError:
            return None

    async def on_typing(self, sid: str, payload: Any = None) -> None:
        payload = require_dict(payload)
        room = require_room(payload.get("room"))
        if "room:" + room not in self.server.manager.get_rooms(sid, self.namespace):
            return None
        identity = self.identity(sid)
        await self.server.emit("typing", {"room": room, "user": identity.user, "typing": bool(payload.get("typing"))},
                               room="room:" + room, skip_sid=sid, namespace=self.namespace, volatile=True)
        return None

    async def on_history(self, sid: str, payload: Any = None) -> dict[str, Any]:
        """``history {room, limit?, after?, before?}``: the newest ``limit`` messages, or those after a seq."""
        payload = require_dict(payload)
        room = require_room(payload.get("room"))
        if not self.identity(sid).may_use_room(room):
            raise ClientError("forbidden", f"your token does not allow room {room}")
        limit = payload.get("limit", 50)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_HISTORY:
            raise ClientError("invalid_limit", f"limit must be an integer from 1 to {MAX_HISTORY}")
        after, before, epoch = payload.get("after"), payload.get("before"), payload.get("epoch")
        after = None if after is None else _seq("after", after)
        before = None if before is None else _seq("before", before)
        if epoch is not None and not isinstance(epoch, str):
            raise ClientError("invalid_epoch", "epoch must be a string, as received")
        history = await read_history(self.runtime.manager.log, room, after=after, before=before, epoch=epoch,
                                     limit=limit)
        return ok(room=room, messages=history.messages, epoch=history.position.epoch, seq=history.position.offset,
                  complete=history.complete)

    async def on_resume(self, sid: str, payload: Any = None) -> dict[str, Any]:
        """For clients without connection state recovery: ``resume {rooms: {room: {seq, epoch?}}}``.

        Joins each room and answers with every message after ``seq``, oldest first; ``complete``
        is false for a room whose history no longer reaches back that far (or whose epoch changed),
        and the client should then fetch ``history`` and accept a gap. Every room is checked
        before any is joined: one bad room refuses the whole request and joins none. The reply
        holds at most half of ``send_queue_max_bytes`` of messages (a bigger one would pin that
        much for a client that does not read): a room cut short has ``more: true`` (and
        ``complete: false``), and resuming it from the last ``seq`` received gets the rest.
        """
        rooms = require_dict(require_dict(payload).get("rooms"), "rooms")
        limit = self.config.limits.max_rooms_per_socket
        if len(rooms) > limit:
            raise ClientError("too_many_rooms", f"at most {limit} rooms")
        identity = self.identity(sid)
        wanted: list[tuple[str, int, Any]] = []
        for room, position in rooms.items():
            room = require_room(room)
            position = position if isinstance(position, dict) else {"seq": position}
            seq, epoch = _seq(f"seq for {room}", position.get("seq")), position.get("epoch")
            if epoch is not None and not isinstance(epoch, str):
                raise ClientError("invalid_epoch", f"epoch for {room} must be a string, as received")
            if not identity.may_use_room(room):
                raise ClientError("forbidden", f"your token does not allow room {room}")
            wanted.append((room, seq, epoch))
        joined_already = set(self.rooms_of(sid))
        if len(joined_already | {"room:" + room for room, _, _ in wanted}) > limit:
            raise ClientError("too_many_rooms", f"at most {limit} rooms")
        budget = self.config.limits.send_queue_max_bytes // 2  # for the whole reply, every room
        result = {}
        log = self.runtime.manager.log
        for room, seq, epoch in wanted:
            joined = await self.on_join(sid, {"room": room})
            channel = room_channel(room)
            # A client that joined before the room's channel existed holds epoch "": its seq
            # can only be of the epoch the channel has now.
            since = StreamPosition(seq, epoch or joined["epoch"])
            messages: list[dict] = []
            more = False
            complete = True
            while not more:
                page = await log.history(channel, since=since, limit=500)
                if not page.recoverable:
                    complete = False
                    break
                for publication in page.publications:
                    budget -= len(publication.data)
                    if budget < 0 or len(messages) >= 10_000:
                        more = True
                        break
                    message = message_of(publication)
                    if message is not None:
                        messages.append(message)
                if len(page.publications) < 500:
                    break
                since = page.publications[-1].position
            self.metrics.replayed.labels(self.namespace).inc(len(messages))
            result[room] = {"messages": messages, "complete": complete and not more, "more": more,
                            "epoch": joined["epoch"], "seq": joined["seq"]}
        return ok(rooms=result)

    async def _resume_after_connect(self, sid: str, rooms: dict[str, Any]) -> None:
        for _ in range(200):
            if self.server.manager.is_connected(sid, self.namespace):
                break
            await asyncio.sleep(0.01)
        else:
            return
        try:
            answer = await self.on_resume(sid, {"rooms": rooms})
        except ClientError as exc:
            await self.emit("resumed", exc.ack(), to=sid)
            return
        summary = {}
        for room, result in answer["rooms"].items():
            for message in result["messages"]:
                await self.emit("message", message, to=sid)
            summary[room] = {"complete": result["complete"], "more": result["more"], "epoch": result["epoch"],
                             "seq": result["seq"], "count": len(result["messages"])}
        await self.emit("resumed", ok(rooms=summary), to=sid)

    # ------------------------------------------------------------------ direct messages

    async def on_dm(self, sid: str, payload: Any = None) -> dict[str, Any]:
        """``dm {to, text}``: to every connection of user ``to``; retried until it sends ``dm_ack``,
        for ``direct_ttl`` at most; refused (``too_many_pending``) while ``direct_max_pending``
        messages wait for ``to``."""
        payload = require_dict(payload)
        to = payload.get("to")
        if not isinstance(to, str) or not 1 <= len(to) <= 128:
            raise ClientError("invalid_user", "to must be a user id")
        text = _text(payload)
        identity = self.identity(sid)
        message = {"id": secrets.token_hex(8), "from": identity.user, "name": identity.name, "to": to,
                   "text": text, "ts": int(time.time() * 1000)}
        if not await self.stores.pending.add(to, PendingMessage(message["id"], "dm", message, time.time()),
                                             self.config.delivery.direct_ttl):
            raise ClientError("too_many_pending", f"{self.config.delivery.direct_max_pending} direct messages "
                              f"already wait for {to}; try again once they are read")
        await self.emit("dm", message, room=user_room(to))
        return ok(id=message["id"], ts=message["ts"])

    async def on_dm_ack(self, sid: str, payload: Any = None) -> dict[str, Any]:
        ids = require_dict(payload).get("ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) and len(i) <= 64 for i in ids) or len(ids) > 1000:
            raise ClientError("invalid_ids", "ids must be a list of message ids")
        acked = await self.stores.pending.ack(self.identity(sid).user, ids)
        return ok(acked=acked)

    async def _retry_direct(self) -> None:
        interval = self.config.delivery.direct_retry_interval
        while True:
            await asyncio.sleep(interval)
            users = {identity.user for (ns, _), identity in list(self.runtime.identities.items())
                     if ns == self.namespace}
            for user in users:
                try:
                    pending = await self.stores.pending.pending(user, self.config.delivery.direct_ttl)
                except Exception as exc:
                    log.debug("pending read failed: %s", exc)
                    continue
                cutoff = time.time() - interval
                for message in pending:
                    if message.created <= cutoff:
                        self.metrics.direct_pending.inc()
                        await self.emit(message.event, message.payload, room=user_room(user))

    # ------------------------------------------------------------------ lifecycle

    async def connected(self, sid: str, identity: Any, recovered: bool, auth: dict[str, Any]) -> None:
        if not recovered and isinstance(auth.get("resume"), dict):
            # CONNECT auth {resume: {room: {seq, epoch?}}}: the same as a resume event, answered
            # with the missed messages as ordinary events once the connection is established.
            self.runtime.background(self._resume_after_connect(sid, auth["resume"]), "chat-resume")
        if recovered:
            # Rooms came back with the session: the "away" entry goes, the connection's own
            # comes back, and the room hears the user is back (a "join").
            for room in self.rooms_of(sid):
                if room.startswith("room:"):
                    name = room[5:]
                    await self.stores.presence.leave(self.namespace, name, AWAY + sid)
                    first = await self.stores.presence.join(self.namespace, name, sid,
                                                            Member(identity.user, identity.name), self.config.delivery.presence_ttl)
                    if first:
                        await self.emit("presence", {"room": name, "user": identity.user, "name": identity.name,
                                                     "action": "join"}, room=room)

    async def disconnected(self, sid: str, identity: Any, reason: str) -> None:
        if self.server.is_recoverable(reason):
            await self._away(sid)
            return
        for room in self.rooms_of(sid):
            if room.startswith("room:"):
                await self._presence_leave(room[5:], sid)

    async def _away(self, sid: str) -> None:
        """The connection is gone but may recover within the recovery window: where it was the
        user's last one in a room, the room hears ``away`` (not a ghost "here", not a leave and
        a join again). Its entry is replaced by one that lapses at the end of the window, when
        whichever node sees it lapse announces the leave; recovering announces a join."""
        window = self.server.max_disconnection_duration
        for room in self.rooms_of(sid):
            if not room.startswith("room:"):
                continue
            name = room[5:]
            try:
                member = await self.stores.presence.leave(self.namespace, name, sid)
                if member is None:
                    continue  # another connection of the user is still in the room
                await self.stores.presence.join(self.namespace, name, AWAY + sid, member, window)
            except Exception as exc:  # Redis away: the entry lapses by itself, announced as a leave
                log.debug("presence away failed: %s", exc)
                continue
            await self.emit("presence", {"room": name, "user": member.user, "name": member.name,
                                         "action": "away"}, room=room)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.config.delivery.presence_ttl / 3)
            entries = [(room[5:], sid) for (ns, sid) in list(self.runtime.identities) if ns == self.namespace
                       for room in self.rooms_of(sid) if room.startswith("room:")]
            try:
                await self.stores.presence.refresh(self.namespace, entries, self.config.delivery.presence_ttl)
                for room, member in await self.stores.presence.expire(self.namespace):
                    await self.emit("presence", {"room": room, "user": member.user, "name": member.name,
                                                 "action": "leave"}, room="room:" + room)
            except Exception as exc:
                log.debug("presence heartbeat failed: %s", exc)


def create(runtime: Any) -> ChatNamespace:
    return ChatNamespace("/chat", runtime)
