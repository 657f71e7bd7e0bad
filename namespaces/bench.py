"""/bench: the events the shared benchmark harness drives (enabled by ``server.bench_namespace``).

It runs on the same machinery as the real namespaces: guest identities, the event-ID and
error-ack dispatch, and a *durable* fan-out (appended to the event log, offset appended,
delivered by the follower), so the figures include the delivery guarantees.
"""

from __future__ import annotations

from typing import Any

from server.namespace import BaseNamespace, ClientError


class BenchNamespace(BaseNamespace):
    async def on_echo(self, sid: str, payload: Any = None) -> Any:
        return payload

    async def on_join(self, sid: str, room: Any = None) -> bool:
        if not isinstance(room, str):
            raise ClientError("invalid_room", "room must be a string")
        await self.enter_room(sid, room)
        return True

    async def on_fanout(self, sid: str, payload: Any = None) -> bool:
        if not isinstance(payload, dict) or not isinstance(payload.get("room"), str):
            raise ClientError("invalid_payload", "fanout takes {room, payload}")
        await self.emit("msg", payload.get("payload"), room=payload["room"])
        return True


def create(runtime: Any) -> BenchNamespace:
    return BenchNamespace("/bench", runtime)
