"""HttpEmitter: the emitter's call shape over the server's HTTP API (``POST /api/v1/publish``),
for apps that cannot reach the server's Redis. Standard library only (urllib).

The API addresses an application's room by its name (``lobby``), a socket by its id and a
user by id; the emitter takes Socket.IO room names as :class:`~.emitter.Emitter` does and maps
them: ``user:<id>`` → the user, ``<prefix><name>`` → the application room (``room:`` in
``/chat``, ``doc:`` in ``/collab``, ``game:`` in ``/game``: :data:`APPLICATION_ROOM_PREFIX`),
anything else → a socket id. The API publishes to one target per request and has no
``skip_sid``; the whole namespace cannot be addressed either.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from .addressing import parse_emit

# The Socket.IO room of an application room, per namespace of the server's applications
# (server/publisher.py's ROOM_PREFIX must equal it: tests/test_emitter.py checks).
APPLICATION_ROOM_PREFIX = {"/chat": "room:", "/collab": "doc:", "/game": "game:"}
USER_ROOM_PREFIX = "user:"


class PublishError(Exception):
    """The API refused or failed a publish.

    :param status: the HTTP status (0 when no answer came back).
    :param code: the API's error code (``missing_field``, ``rate_limited``, ``unavailable`` ...).
    :param field: the request field at fault, when the API names one.
    :param retry_after: seconds to wait before retrying (429, 503), when the API says.
    """

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retry_after = retry_after


def api_target(namespace: str, room: str) -> dict[str, str]:
    """The API's target field for Socket.IO room ``room`` of ``namespace``."""
    if room.startswith(USER_ROOM_PREFIX):
        return {"user": room[len(USER_ROOM_PREFIX):]}
    prefix = APPLICATION_ROOM_PREFIX.get(namespace)
    if prefix is not None and room.startswith(prefix):
        return {"room": room[len(prefix):]}
    return {"to": room}


class HttpEmitter:
    """Publishes through a server node's HTTP API.

    :param url: the server's base URL, e.g. ``https://realtime.example.com``.
    :param api_key: a key of the server's ``[api] keys`` (sent as ``Authorization: Bearer``).
    :param timeout: seconds to wait for each request.
    """

    def __init__(self, url: str, api_key: str, *, timeout: float = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must be http:// or https://, got {url!r:.80}")
        self.endpoint = url.rstrip("/") + "/api/v1/publish"
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json",
                         "Accept": "application/json"}
        self.timeout = timeout

    def emit(self, event: str, data: Any = None, *, to: Any = None, room: Any = None, namespace: str = "/",
             skip_sid: Any = None, idempotency_key: str | None = None, callback: Any = None) -> dict[str, Any]:
        """As :meth:`Emitter.emit <realtime_channels.emitter.Emitter.emit>`, to one room, socket
        or user (``data`` must be JSON). The ``idempotency_key`` is scoped to the API key.

        :returns: ``{offset, epoch, duplicate}`` (``offset`` and ``epoch`` null in a namespace
            without history, such as ``/game``).
        :raises PublishError: the API answered with an error, or could not be reached
            (``status`` 0); retry with the same ``idempotency_key``.
        """
        emit = parse_emit(event, data, to, room, namespace, skip_sid, callback)
        if emit.many or emit.rooms == (None,):
            raise ValueError("the HTTP API publishes to one room, socket or user: give to= one name")
        if emit.envelope.skip:
            raise ValueError("the HTTP API has no skip_sid")
        body: dict[str, Any] = {"namespace": emit.namespace, **api_target(emit.namespace, emit.rooms[0]),
                                "event": emit.envelope.event, "args": emit.envelope.args}
        if idempotency_key is not None:
            body["idempotency_key"] = idempotency_key
        return self._post(body)

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(self.endpoint, data=json.dumps(body).encode(), headers=self._headers,
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise _api_error(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            raise PublishError(0, "unreachable", str(getattr(exc, "reason", exc))) from None


def _api_error(exc: urllib.error.HTTPError) -> PublishError:
    try:
        error = json.loads(exc.read()).get("error") or {}
    except (ValueError, AttributeError, OSError):
        error = {}
    retry = exc.headers.get("Retry-After") if exc.headers else None
    return PublishError(exc.code, str(error.get("code", "http_error")), str(error.get("message", exc.reason)),
                        error.get("field"), float(retry) if retry and retry.replace(".", "", 1).isdigit() else None)
