"""LeanRequest: what a request served by server/http_front.py is, for the code that reads one.

The lean front answers requests without aiohttp's ``BaseRequest``. What the rest of the server
reads of a request there — ``check_polling`` (the declared body length, a body stream, the
client's address, the transport), python-engineio's environ for the connect handlers (the
headers, the query) and item storage (``rt_packets``) — is this small object, and
:func:`lean_environ` builds the environ from it as python-engineio's aiohttp driver builds one
from an aiohttp request, so a session opened on the lean path keeps its request
(``SessionEnviron``) and not a dict of some 28 entries.
"""

from __future__ import annotations

from typing import Any

_POLLING = {"transport": "polling"}


class Headers(dict):
    """A request's headers by lower-case name, repeated ones joined with commas; what
    ``PollingFront.route`` and server/websocket.py read (``in``, ``get``, ``getall``)."""

    __slots__ = ()

    def getall(self, name: str, default: Any = None) -> Any:
        value = self.get(name)
        return default if value is None else [value]


class LeanRequest(dict):
    """A request on the lean path (see the module docstring).

    :param remote: the client's address.
    :param content_length: the declared body length (a POST's).
    :param content: a body stream, only for a body that never came.
    :param path: the request's path (the Engine.IO endpoint), for the environ.
    :param query_string: the raw query, for the environ.
    :param headers: the request's headers, for the environ.

    ``query`` is what ``check_polling`` and the engine's connect bookkeeping read of the query
    (its ``transport``); ``transport`` is the connection's, for a WebSocket's request (the engine
    records it for the session, as it records an aiohttp request's).
    """

    __slots__ = ("content_length", "content", "remote", "query", "path", "query_string", "headers", "transport")

    def __init__(self, remote: str, content_length: int | None = None, content: Any = None, path: str = "",
                 query_string: str = "", headers: Headers | None = None, query: dict[str, str] = _POLLING) -> None:
        super().__init__()
        self.query = query
        self.remote = remote
        self.content_length = content_length
        self.content = content
        self.path = path
        self.query_string = query_string
        self.headers = headers if headers is not None else Headers()
        self.transport: Any = None


# A header name (lower case, as parsed) -> its environ key: a connect's eight or so headers
# each cost an upper() and a replace() otherwise.
_ENVIRON_KEYS: dict[str, str] = {}


def lean_environ(request: LeanRequest) -> dict[str, Any]:
    """python-engineio's environ for ``request``, as its aiohttp driver's ``translate_request``
    builds one (the connect handlers read the headers, the address and the query)."""
    environ: dict[str, Any] = {
        "wsgi.input": None, "wsgi.version": (1, 0), "wsgi.async": True, "wsgi.multithread": False,
        "wsgi.multiprocess": False, "wsgi.run_once": False, "SERVER_SOFTWARE": "aiohttp",
        "REQUEST_METHOD": "GET", "QUERY_STRING": request.query_string,
        "RAW_URI": request.path + "?" + request.query_string,
        "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "0",
        "SERVER_NAME": "aiohttp", "SERVER_PORT": "0", "aiohttp.request": request,
    }
    for name, value in request.headers.items():
        if name == "content-type":
            environ["CONTENT_TYPE"] = value
        elif name == "content-length":
            environ["CONTENT_LENGTH"] = value
        else:
            key = _ENVIRON_KEYS.get(name)
            if key is None:
                key = "HTTP_" + name.upper().replace("-", "_")
                if len(_ENVIRON_KEYS) < 256:  # the usual headers, not whatever a client invents
                    _ENVIRON_KEYS[name] = key
            environ[key] = value
    environ["wsgi.url_scheme"] = environ.get("HTTP_X_FORWARDED_PROTO", "http")
    environ["PATH_INFO"] = request.path
    environ["SCRIPT_NAME"] = ""
    return environ
