"""The OpenAPI 3.1 document of the server API (served at ``/api/v1/openapi.json``).

Written as data, next to the code it describes; ``tests/test_api.py`` validates it with
openapi-spec-validator, checks that it lists exactly the routes ``server/api.py`` serves, that
the README's "Server API" section lists exactly these, and validates live answers against the
schemas below.
"""

from __future__ import annotations

import copy
from typing import Any

from . import __version__

OFFSET = {"type": ["integer", "null"], "minimum": 1,
          "description": "The event's offset in its room's channel: 1, 2, 3, ... within an epoch (a /chat "
                         "message's `seq`). Null for a namespace without history (/game)."}
EPOCH = {"type": ["string", "null"],
         "description": "Opaque id of the channel's history: when it changes, offsets from before it are void "
                        "(the history was lost). Null for a namespace without history."}
NAMESPACE = {"type": "string", "enum": ["/chat", "/collab", "/game"]}
ROOM = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$",
        "description": "An application room: a /chat room, a /collab document, a /game game."}
SID = {"type": "string", "pattern": "^[A-Za-z0-9_-]{20,64}$", "description": "A socket id (Socket.IO `socket.id`)."}
USER = {"type": "string", "minLength": 1, "maxLength": 128,
        "description": "A user id (a token's `sub`, or a guest id)."}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


def _ok(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


COMMON_ERRORS = {
    "400": _error("Malformed input: `error.field` names the field at fault (`invalid_json`, `invalid_body`, "
                  "`missing_field`, `invalid_field`, `unknown_field`, `unknown_namespace`, `not_supported`)."),
    "401": _error("No key or an unknown key (`unauthorized`)."),
    "404": _error("`api_disabled` (no key configured) or `not_found`."),
    "429": _error("`rate_limited` (this key's requests per second) or `busy`; see `Retry-After`."),
    "500": _error("`internal`: a bug; the request may or may not have taken effect."),
    "503": _error("`unavailable`: shared state (Redis) unreachable; retry (with the same idempotency_key)."),
}
BODY_ERRORS = {
    "408": _error("`timeout`: the body did not arrive within `limits.body_timeout`."),
    "413": _error("`body_too_large`: the body is over `api.max_body_bytes`."),
}


def _body(schema: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(schema)}}}


def _query(name: str, schema: dict[str, Any], required: bool, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


def _operation(op_id: str, summary: str, ok: dict[str, Any], body: str | None = None,
               parameters: list[dict[str, Any]] | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    responses = {"200": ok, **COMMON_ERRORS, **(BODY_ERRORS if body else {}), **(extra or {})}
    operation: dict[str, Any] = {"operationId": op_id, "summary": summary, "responses": dict(sorted(responses.items()))}
    if body:
        operation["requestBody"] = _body(body)
    if parameters:
        operation["parameters"] = parameters
    return operation


SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "additionalProperties": False,
              "properties": {"error": _ref("ErrorDetail")}},
    "ErrorDetail": {
        "type": "object", "required": ["code", "message"], "additionalProperties": False,
        "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                       "field": {"type": "string", "description": "The request field at fault."}},
    },
    "PublishRequest": {
        "type": "object", "required": ["namespace", "event"], "additionalProperties": False,
        "description": "Exactly one of `room`, `to`, `user`.",
        "properties": {
            "namespace": NAMESPACE, "room": ROOM, "to": SID, "user": USER,
            "event": {"type": "string", "minLength": 1, "maxLength": 128},
            "args": {"type": "array", "default": [], "description": "The event's arguments (JSON values); "
                     "with the event name at most `limits.max_event_bytes` of JSON (else 413 `payload_too_large`)."},
            "idempotency_key": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,128}$",
                                "description": "Within `delivery.dedupe_ttl`, a retry with the same key (from the same "
                                               "API key) publishes nothing and gets the first result, `duplicate` "
                                               "true; the same key with a different event is 409 "
                                               "`idempotency_key_reused`."},
        },
    },
    "PublishResult": {
        "type": "object", "required": ["offset", "epoch", "duplicate"], "additionalProperties": False,
        "properties": {"offset": OFFSET, "epoch": EPOCH, "duplicate": {"type": "boolean"}},
    },
    "Command": {
        "type": "object", "required": ["method"], "additionalProperties": False,
        "properties": {"method": {"type": "string", "enum": ["publish", "history", "presence", "sockets", "join",
                                                             "leave", "disconnect"]},
                       "params": {"type": "object", "description": "What the route of the same name takes "
                                  "(its body, or its query parameters as JSON values)."}},
    },
    "BatchRequest": {
        "type": "object", "required": ["commands"], "additionalProperties": False,
        "properties": {"commands": {"type": "array", "minItems": 1, "items": _ref("Command"),
                                    "description": "At most `api.max_batch_commands`; each takes one request of the "
                                                   "key's rate."}},
    },
    "BatchResult": {
        "type": "object", "required": ["results"], "additionalProperties": False,
        "properties": {"results": {"type": "array", "description": "One per command, in order.", "items": {
            "type": "object", "required": ["status"], "additionalProperties": False,
            "description": "`result` (what the route of the same name answers) when `status` is 200, else `error`.",
            "properties": {"status": {"type": "integer"}, "result": {"type": "object"},
                           "error": _ref("ErrorDetail")}}}},
    },
    "HistoryEvent": {
        "type": "object", "required": ["offset", "event", "args"], "additionalProperties": False,
        "properties": {"offset": {"type": "integer"}, "event": {"type": "string"}, "args": {"type": "array"}},
    },
    "HistoryResult": {
        "type": "object", "required": ["events", "offset", "epoch", "complete"], "additionalProperties": False,
        "properties": {
            "events": {"type": "array", "items": _ref("HistoryEvent"), "description": "Oldest first."},
            "offset": {"type": "integer", "description": "The newest offset of the room's channel (0: empty)."},
            "epoch": {"type": "string", "description": "The history's epoch (opaque)."},
            "complete": {"type": "boolean", "description": "False when events after `since` were already dropped "
                         "(too old). Compare `epoch` with the one `since` came with: when it changed, the history "
                         "was lost and offsets from before mean nothing."},
        },
    },
    "Member": {"type": "object", "required": ["user", "name"], "additionalProperties": False,
               "properties": {"user": {"type": "string"}, "name": {"type": "string"}}},
    "PresenceResult": {"type": "object", "required": ["members"], "additionalProperties": False,
                       "properties": {"members": {"type": "array", "items": _ref("Member")}}},
    "Socket": {
        "type": "object", "required": ["sid", "namespace", "node", "user", "name", "transport", "rooms"],
        "additionalProperties": False,
        "properties": {"sid": {"type": "string"}, "namespace": {"type": "string"}, "node": {"type": "string"},
                       "user": {"type": ["string", "null"]}, "name": {"type": ["string", "null"]},
                       "transport": {"type": "string", "enum": ["polling", "websocket"]},
                       "rooms": {"type": "array", "items": {"type": "string"}}},
    },
    "SocketsResult": {"type": "object", "required": ["sockets", "truncated"], "additionalProperties": False,
                      "properties": {"sockets": {"type": "array", "items": _ref("Socket")},
                                     "truncated": {"type": "boolean"}}},
    "RoomRequest": {
        "type": "object", "required": ["namespace", "room"], "additionalProperties": False,
        "description": "Exactly one of `sid`, `user` (every connection of the user in the namespace).",
        "properties": {"namespace": NAMESPACE, "room": ROOM, "sid": SID, "user": USER},
    },
    "DisconnectRequest": {
        "type": "object", "additionalProperties": False,
        "description": "Exactly one of `sid`, `user`; without `namespace`, every application namespace.",
        "properties": {"namespace": NAMESPACE, "sid": SID, "user": USER},
    },
    "CountResult": {"type": "object", "required": ["count"], "additionalProperties": False,
                    "properties": {"count": {"type": "integer", "minimum": 0}}},
}


NAMESPACE_Q = _query("namespace", NAMESPACE, True, "The namespace.")
CHAT_Q = _query("namespace", {"type": "string", "enum": ["/chat"]}, True, "Only /chat keeps room history and presence.")
ROOM_Q = _query("room", ROOM, True, "The room.")

PATHS: dict[str, Any] = {
    "/publish": {"post": _operation(
        "publish", "Publish an event to a room, a socket or every connection of a user. In a durable namespace "
        "(/chat, /collab) it is logged: delivered in order by every node, its offset as the last argument, "
        "recovered by clients after a cut.",
        _ok("PublishResult", "Published (or, with a repeated idempotency_key, the first publish's result)."),
        body="PublishRequest",
        extra={"409": _error("`in_progress` or `idempotency_key_reused`."),
               "413": _error("`body_too_large` (over `api.max_body_bytes`) or `payload_too_large` (the event is "
                             "over `limits.max_event_bytes`).")})},
    "/batch": {"post": _operation(
        "batch", "Run several commands, in order, one after the other.",
        _ok("BatchResult", "Each command's result or error, in order."), body="BatchRequest")},
    "/history": {"get": _operation(
        "history", "The messages of a /chat room: the newest `limit`, or the first `limit` after `since`. "
        "Page forward by passing the last event's offset as `since` until no event comes back.",
        _ok("HistoryResult", "The events."),
        parameters=[CHAT_Q, ROOM_Q,
                    _query("since", {"type": "integer", "minimum": 0}, False, "An offset from an earlier answer."),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}, False,
                           "Events at most.")])},
    "/presence": {"get": _operation(
        "presence", "Who is in a /chat room, on every node.", _ok("PresenceResult", "The members, by user."),
        parameters=[CHAT_Q, ROOM_Q])},
    "/sockets": {"get": _operation(
        "sockets", "The sockets of a namespace (in a room), on every node.", _ok("SocketsResult", "The sockets."),
        parameters=[NAMESPACE_Q, _query("room", ROOM, False, "Only the sockets in this room."),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 10000, "default": 1000}, False,
                           "Sockets at most (`truncated` says when there were more).")])},
    "/join": {"post": _operation(
        "join", "Make a socket, or every connection of a user, join a room (on every node).",
        _ok("CountResult", "How many sockets joined."), body="RoomRequest",
        extra={"409": _error("`too_many_rooms`: one of the sockets is in `limits.max_rooms_per_socket` rooms "
                             "already; none joined.")})},
    "/leave": {"post": _operation(
        "leave", "Make a socket, or every connection of a user, leave a room (on every node).",
        _ok("CountResult", "How many sockets left."), body="RoomRequest")},
    "/disconnect": {"post": _operation(
        "disconnect", "Disconnect a socket, or every connection of a user, on every node; not recoverable.",
        _ok("CountResult", "How many sockets were disconnected."), body="DisconnectRequest")},
    "/openapi.json": {"get": _operation(
        "openapi", "This document.", {"description": "The OpenAPI document.",
                                      "content": {"application/json": {"schema": {"type": "object"}}}})},
}


def openapi_document() -> dict[str, Any]:
    """The document, a fresh copy (callers may change it)."""
    return copy.deepcopy({
        "openapi": "3.1.0",
        "info": {"title": "Realtime server API", "version": __version__,
                 "description": "The HTTP API of every node, for the application's backend. Authenticate with "
                                "`Authorization: Bearer <key>` (`[api] keys`). Errors are "
                                "`{error: {code, message, field?}}`."},
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "paths": PATHS,
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "An API key from `[api] keys` or $API_KEYS."}}},
    })
