"""No sticky sessions: a request for an Engine.IO session owned by another node is forwarded there.

Every Engine.IO session id starts with the owning node's tag (see ``EngineAdapter.generate_id``),
so a node that receives a long-polling request, or a WebSocket upgrade, for a session it does
not hold finds the owner's address in the node registry and relays the request to it. A plain
round-robin load balancer with no affinity then works for polling clients exactly as a direct
connection does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable, Collection

import aiohttp
from aiohttp import web

from .cluster import Cluster

log = logging.getLogger("server.forwarding")

TAG_LENGTH = 6
FORWARDED_HEADER = "X-Realtime-Forwarded"
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "host", "content-length"}


def node_tag(sid: str) -> str:
    return sid[:TAG_LENGTH]


class Forwarder:
    """Relays Engine.IO requests to the node that owns the session.

    :param cluster: the node registry: this node's id and session id tag, and the other
        nodes' tags and addresses.
    :param sessions: this node's live Engine.IO session ids (a request for one of them is
        served here).
    :param ping_interval: ``server.ping_interval``, seconds.
    :param ping_timeout: ``server.ping_timeout``, seconds; with ``ping_interval``, how long
        a long poll may wait.
    """

    def __init__(self, cluster: Cluster, sessions: Collection[str], ping_interval: float,
                 ping_timeout: float) -> None:
        self.cluster = cluster
        self.sessions = sessions
        # Long polls wait up to ping_interval + ping_timeout: the relay must wait longer.
        self.relay_timeout = ping_interval + ping_timeout + 10
        self.session: aiohttp.ClientSession | None = None
        self._addresses: dict[str, str] = {}
        self._fetched = 0.0

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.relay_timeout, connect=2)
        self.session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def address(self, tag: str) -> str | None:
        if tag not in self._addresses or time.monotonic() - self._fetched > 2.0:
            self._addresses = {n["tag"]: n["address"] for n in await self.cluster.nodes()
                               if isinstance(n.get("tag"), str) and isinstance(n.get("address"), str)}
            self._fetched = time.monotonic()
        return self._addresses.get(tag)

    def owner_elsewhere(self, request: web.Request) -> str | None:
        """The tag of the node that owns this request's session, if that is another node."""
        sid = request.query.get("sid")
        if not sid or request.headers.get(FORWARDED_HEADER):
            return None
        if sid in self.sessions:
            return None
        tag = node_tag(sid)
        return None if tag == self.cluster.tag else tag

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if self.session is None or not request.path.startswith("/socket.io"):
            return await handler(request)
        tag = self.owner_elsewhere(request)
        if tag is None:
            return await handler(request)
        address = await self.address(tag)
        if address is None:
            # The owner is gone (crashed or drained): the client must start a new session.
            return web.Response(status=400, text='{"code":1,"message":"Session ID unknown"}',
                                content_type="application/json")
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._relay_websocket(request, address)
        return await self._relay_http(request, address)

    def _headers(self, request: web.Request) -> dict[str, str]:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        headers[FORWARDED_HEADER] = self.cluster.node
        peer = request.remote or ""
        headers["X-Forwarded-For"] = ", ".join(filter(None, (request.headers.get("X-Forwarded-For"), peer)))
        headers.setdefault("X-Forwarded-Host", request.host)
        headers.setdefault("X-Forwarded-Proto", request.scheme)
        return headers

    async def _relay_http(self, request: web.Request, address: str) -> web.StreamResponse:
        assert self.session is not None
        url = f"http://{address}{request.rel_url}"
        body = await request.read()
        try:
            async with self.session.request(request.method, url, data=body, headers=self._headers(request),
                                            allow_redirects=False, skip_auto_headers=("Accept-Encoding",)) as upstream:
                payload = await upstream.read()
                headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
                return web.Response(status=upstream.status, body=payload, headers=headers)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.info("relay to %s failed: %s", address, exc)
            return web.Response(status=400, text='{"code":1,"message":"Session ID unknown"}',
                                content_type="application/json")

    async def _relay_websocket(self, request: web.Request, address: str) -> web.StreamResponse:
        assert self.session is not None
        headers = {k: v for k, v in self._headers(request).items()
                   if not k.lower().startswith("sec-websocket")}
        try:
            upstream = await self.session.ws_connect(f"ws://{address}{request.rel_url}", headers=headers,
                                                     autoping=True, compress=0, max_msg_size=0)
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return web.Response(status=400)
        downstream = web.WebSocketResponse(max_msg_size=0)
        await downstream.prepare(request)

        async def pump(src, dst) -> None:
            async for msg in src:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await dst.send_str(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await dst.send_bytes(msg.data)
                else:
                    break
            await dst.close()

        await asyncio.gather(pump(downstream, upstream), pump(upstream, downstream), return_exceptions=True)
        return downstream
