"""Input checks of the server API: the request body (bounded, JSON) and each field, each
mistake an :class:`ApiError` whose message names the field."""

from __future__ import annotations

import asyncio
import re
from typing import Any, Mapping

import orjson
from aiohttp import web

from .namespace import EVENT_ID, ROOM_NAME
from .publisher import ROOM_PREFIX, Target
from .realtime import RESERVED_EVENTS

# A Socket.IO socket id: this node's 6-character tag and python-engineio's 20 characters.
# Anything else (a room name such as "lobby") is refused, so ``to`` never reaches a room.
SID = re.compile(r"^[A-Za-z0-9_-]{20,64}$")
MAX_USER = 128
MAX_EVENT = 128
ECHO = 64  # characters of a bad value quoted back


class ApiError(Exception):
    """An answer other than success: ``{"error": {"code", "message", "field"?}}`` with ``status``.

    :param field: the request field at fault, when there is one.
    :param headers: extra response headers (``Retry-After``, ``WWW-Authenticate``, ``Allow``).
    """

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return {"error": error}


def bad(field: str, message: str, code: str = "invalid_field") -> ApiError:
    return ApiError(400, code, f"{field}: {message}", field)


def echo(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return repr(text[:ECHO] + ("…" if len(text) > ECHO else ""))


async def read_json(request: web.Request, max_bytes: int, timeout: float) -> dict[str, Any]:
    """The request's body as a JSON object, read without ever holding more than ``max_bytes``.

    :param max_bytes: a larger body is refused (413): at once when Content-Length says so,
                      else as soon as that many bytes have arrived.
    :param timeout: seconds the whole body may take to arrive (408 after).
    """
    too_large = ApiError(413, "body_too_large", f"the request body is limited to {max_bytes} bytes",
                         headers={"Connection": "close"})
    if request.content_length is not None and request.content_length > max_bytes:
        raise too_large
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            # Never more than one byte past the cap is read: enough to know it was passed.
            while chunk := await request.content.read(min(65536, max_bytes + 1 - len(body))):
                body += chunk
                if len(body) > max_bytes:
                    raise too_large
    except TimeoutError:
        raise ApiError(408, "timeout", f"the request body did not arrive within {timeout:g} s",
                       headers={"Connection": "close"}) from None
    if not body.strip():
        raise ApiError(400, "invalid_json", "the request body is empty; expected a JSON object")
    try:
        value = orjson.loads(bytes(body))
    except orjson.JSONDecodeError as exc:
        # orjson's message says where (line, column, char); the body itself is not echoed.
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_body", "the request body must be a JSON object")
    return value


def only(params: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    """Refuse fields the operation does not take (a misspelt field would be silently ignored)."""
    for name in params:
        if name not in allowed:
            raise bad(str(name)[:ECHO], f"unknown field (this operation takes {', '.join(allowed)})",
                      "unknown_field")


def namespace(params: Mapping[str, Any], allowed: tuple[str, ...] = tuple(ROOM_PREFIX)) -> str:
    value = params.get("namespace")
    if value is None:
        raise bad("namespace", "required", "missing_field")
    if value in ROOM_PREFIX and value not in allowed:
        raise bad("namespace", f"this operation is for {', '.join(allowed)} only", "not_supported")
    if value not in allowed:
        raise bad("namespace", f"unknown namespace {echo(value)} (here: {', '.join(allowed)})", "unknown_namespace")
    return value


def room(params: Mapping[str, Any], required: bool = True) -> str | None:
    value = params.get("room")
    if value is None:
        if required:
            raise bad("room", "required", "missing_field")
        return None
    if not isinstance(value, str) or not ROOM_NAME.match(value):
        raise bad("room", "1-64 characters: letters, digits, _ . : - (starting with a letter or digit)")
    return value


def sid(value: Any, field: str) -> str:
    if not isinstance(value, str) or not SID.match(value):
        raise bad(field, f"not a socket id: {echo(value)}")
    return value


def user(value: Any, field: str = "user") -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_USER:
        raise bad(field, f"a user id is a string of 1-{MAX_USER} characters")
    return value


def target(params: Mapping[str, Any], kinds: dict[str, str]) -> Target:
    """Exactly one of the fields in ``kinds`` (field name -> Target kind)."""
    given = [f for f in kinds if params.get(f) is not None]
    if not given:
        names = ", ".join(list(kinds)[:-1]) + " or " + list(kinds)[-1]
        raise bad(next(iter(kinds)), f"one of {names} is required", "missing_field")
    if len(given) > 1:
        raise bad(given[1], f"give only one of {', '.join(given)}")
    field = given[0]
    kind = kinds[field]
    value = params[field]
    if kind == "room":
        return Target("room", room(params) or "")
    if kind == "sid":
        return Target("sid", sid(value, field))
    return Target("user", user(value, field))


def event(params: Mapping[str, Any]) -> str:
    value = params.get("event")
    if value is None:
        raise bad("event", "required", "missing_field")
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_EVENT:
        raise bad("event", f"an event name is a string of 1-{MAX_EVENT} characters")
    if value in RESERVED_EVENTS:
        raise bad("event", f"{value!r} is reserved by Socket.IO")
    return value


def args(params: Mapping[str, Any]) -> list[Any]:
    value = params.get("args", [])
    if not isinstance(value, list):
        raise bad("args", "must be a list (the event's arguments)")
    return value


def idempotency_key(params: Mapping[str, Any]) -> str | None:
    value = params.get("idempotency_key")
    if value is not None and (not isinstance(value, str) or not EVENT_ID.match(value)):
        raise bad("idempotency_key", "1-128 characters: letters, digits, _ . : -")
    return value


def offset(params: Mapping[str, Any], field: str) -> int | None:
    """An offset as returned by this API: an integer >= 0 (query strings carry it as text)."""
    value = params.get(field)
    if value is None:
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 15:
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 53:
        raise bad(field, "an offset as returned by this API: an integer >= 0")
    return value


def integer(params: Mapping[str, Any], field: str, default: int, lo: int, hi: int) -> int:
    """An integer field; query strings carry it as text."""
    value = params.get(field, default)
    if isinstance(value, str) and value.isdigit() and len(value) < 10:
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise bad(field, f"an integer from {lo} to {hi}")
    return value


def boolean(params: Mapping[str, Any], field: str) -> bool:
    value = params.get(field, False)
    if isinstance(value, str) and value in ("true", "false"):
        return value == "true"
    if not isinstance(value, bool):
        raise bad(field, "true or false")
    return value
