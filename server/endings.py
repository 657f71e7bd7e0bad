"""How the server ends a socket: each way is an :class:`Ending`, passed to ``RealtimeServer.end``.

Every server-initiated end of a socket goes through that one method, and every disconnect
(whoever started it) through ``RealtimeServer.disconnect_namespace``, which keeps the socket's
saved session for connection state recovery when the end is recoverable and forgets it
otherwise, so nobody can take it over later by its ``pid``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Ending:
    """Why the server ends a socket, and what follows for its saved session.

    :param reason: the disconnect reason the namespaces' handlers and the operators' UI see.
    :param recoverable: the saved session is kept, so the client recovers it on reconnect;
                        otherwise it is forgotten at once (nobody can take it over by its pid).
    :param send_close: send the Engine.IO CLOSE packet first (a polling client reads it).
    :param abort: drop the TCP connection at once (a client that does not read).
    """

    reason: str
    recoverable: bool
    send_close: bool = True
    abort: bool = False


# Every server-initiated end of a socket is one of these, through RealtimeServer.end.
REVOKED = Ending("revoked", recoverable=False)
USER_DISCONNECTED = Ending("disconnected by an operator", recoverable=False)
TOKEN_EXPIRED = Ending("token expired", recoverable=False)
SERVER_DISCONNECTED = Ending("server disconnect", recoverable=False)
PROTOCOL_ERROR = Ending("protocol error", recoverable=False, send_close=False)
CONNECT_TIMEOUT = Ending("connect timeout", recoverable=False, send_close=False)
DRAINED = Ending("node draining", recoverable=True)
SHUTDOWN = Ending("server shutting down", recoverable=True)
SLOW_CONSUMER = Ending("slow consumer", recoverable=True, send_close=False, abort=True)
# The client came back on a new connection and took the session: the old socket is closed
# without saving (the session is the new socket's now) and without a presence "leave".
EVICTED = Ending("evicted", recoverable=True, send_close=False)
ENDINGS = {e.reason: e for e in (REVOKED, USER_DISCONNECTED, TOKEN_EXPIRED, SERVER_DISCONNECTED, PROTOCOL_ERROR,
                                 CONNECT_TIMEOUT, DRAINED, SHUTDOWN, SLOW_CONSUMER, EVICTED)}
