"""SessionEnviron: the WSGI environ an Engine.IO session keeps, built again when it is read."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, ItemsView, Iterator, KeysView, ValuesView


class SessionEnviron(Mapping[str, Any]):
    """The environ of the request that opened a session, kept for the session's life:
    python-socketio hands it to every namespace's connect handler, and the Admin UI's socket
    details read its headers. Few ever read it, so it keeps only the request (which the
    environ held anyway, as ``aiohttp.request``) and builds the dict again, the way
    python-engineio built it, each time it is read, instead of a dict of some 28 entries
    and their strings for every connection (about 1.3 KiB).

    :param request: the aiohttp request that opened the session.
    :param translate: builds the environ of a request (python-engineio's aiohttp driver's
        ``translate_request``, as the engine wraps it).
    """

    __slots__ = ("_request", "_translate")
    # The environ built last, with its owner: a reader asking several things in a row (the
    # Admin UI's socket details: five keys and the headers) builds it once.
    _last: tuple["SessionEnviron | None", dict[str, Any]] = (None, {})

    def __init__(self, request: Any, translate: Callable[[Any], dict]) -> None:
        self._request = request
        self._translate = translate

    def environ(self) -> dict[str, Any]:
        """The whole environ, as a new dict (the caller's to change)."""
        return self._translate(self._request)

    def _read(self) -> dict[str, Any]:
        owner, environ = SessionEnviron._last
        if owner is not self:
            environ = self.environ()
            SessionEnviron._last = (self, environ)
        return environ

    # Every read goes through _read (the Mapping defaults would build the dict once per key).
    def __getitem__(self, key: str) -> Any:
        return self._read()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._read())

    def __len__(self) -> int:
        return len(self._read())

    def __contains__(self, key: object) -> bool:
        return key in self._read()

    def get(self, key: str, default: Any = None) -> Any:
        return self._read().get(key, default)

    def keys(self) -> KeysView[str]:
        return self._read().keys()

    def items(self) -> ItemsView[str, Any]:
        return self._read().items()

    def values(self) -> ValuesView[Any]:
        return self._read().values()

    def __eq__(self, other: object) -> bool:
        return self._read() == other

    __hash__ = None  # type: ignore[assignment]  # as a dict's

    def __repr__(self) -> str:
        return f"SessionEnviron({self._read()!r})"
