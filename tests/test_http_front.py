"""HttpFront (server/http_front.py) with real sockets against a real server process: keep-alive
and pipelining in order, hand-off of everything else to aiohttp with the request's bytes intact,
and the limits (head size and count, slow heads and bodies, declared bodies over the limit,
chunked bodies, Expect, clients closing mid-request, bytes sent while a long-poll waits,
shutdown). Each case ends in a clear answer or a clean close, and the node keeps serving."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time

import pytest

from tests.test_polling_path import requests_by_path


def connect(server, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    return sock


def read_response(sock: socket.socket, buf: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response from ``sock`` (Content-Length or chunked framing; an answer that
    closes the connection without either reads to the end); what follows stays in ``buf``."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"closed before a response: {bytes(buf)!r}")
        buf += data
    end = buf.index(b"\r\n\r\n")
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    del buf[:end + 4]
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if status in (100, 101):
        return status, headers, b""
    if "content-length" in headers:
        length = int(headers["content-length"])
        while len(buf) < length:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed inside a body")
            buf += data
        body = bytes(buf[:length])
        del buf[:length]
        return status, headers, body
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            while b"\r\n" not in buf:
                buf += sock.recv(65536)
            line_end = buf.index(b"\r\n")
            size = int(bytes(buf[:line_end]), 16)
            while len(buf) < line_end + 2 + size + 2:
                buf += sock.recv(65536)
            body += bytes(buf[line_end + 2:line_end + 2 + size])
            del buf[:line_end + 2 + size + 2]
            if size == 0:
                return status, headers, body
    while data := sock.recv(65536):
        buf += data
    body = bytes(buf)
    buf.clear()
    return status, headers, body


def closed(sock: socket.socket, timeout: float = 5.0) -> bool:
    """Whether the server closed ``sock`` (EOF or reset) within ``timeout``, unread bytes aside."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def request(method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k in (headers or {})):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def handshake(server) -> str:
    sock = connect(server)
    sock.sendall(request("GET", "/socket.io/?EIO=4&transport=polling"))
    status, _, body = read_response(sock, bytearray())
    sock.close()
    assert status == 200
    return json.loads(body[1:])["sid"]


def joined(server) -> tuple[str, str]:
    """A polling session connected to /chat (its CONNECT answered): (sid, its polling path)."""
    sid = handshake(server)
    path = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
    sock = connect(server)
    buf = bytearray()
    sock.sendall(request("POST", path, b"40/chat,"))
    assert read_response(sock, buf)[2] == b"ok"
    sock.sendall(request("GET", path))
    assert read_response(sock, buf)[2].startswith(b'40/chat,{"sid":')
    sock.close()
    return sid, path


def healthy(server) -> bool:
    return server.get("/healthz")[0] == 200


def test_a_session_on_one_keep_alive_connection_then_connection_close(server):
    before = requests_by_path(server)
    sock = connect(server)
    buf = bytearray()
    sock.sendall(request("GET", "/socket.io/?EIO=4&transport=polling"))
    status, headers, body = read_response(sock, buf)
    assert status == 200 and headers["content-type"] == "text/plain; charset=UTF-8" and "connection" not in headers
    path = f"/socket.io/?EIO=4&transport=polling&sid={json.loads(body[1:])['sid']}"
    sock.sendall(request("POST", path, b"40/chat,"))
    assert read_response(sock, buf)[:3:2] == (200, b"ok")
    sock.sendall(request("GET", path, headers={"Connection": "close"}))
    status, headers, body = read_response(sock, buf)
    assert status == 200 and body.startswith(b'40/chat,{"sid":') and headers["connection"] == "close"
    assert closed(sock)
    assert requests_by_path(server)["lean"] - before["lean"] == 3


def test_pipelined_requests_are_answered_in_order_and_the_rest_goes_to_aiohttp(server):
    sid, path = joined(server)
    before = requests_by_path(server)
    sock = connect(server)
    buf = bytearray()
    # A POST whose join is answered on the GET behind it, then a page the application serves:
    # all in one write, so the lean requests and the hand-off share one read.
    join = b'42/chat,1["join",{"room":"r"}]'
    sock.sendall(request("POST", path, join) + request("GET", path) + request("GET", "/healthz"))
    assert read_response(sock, buf)[2] == b"ok"
    status, _, body = read_response(sock, buf)
    assert status == 200 and body.startswith(b"43/chat,1[")
    status, _, body = read_response(sock, buf)
    assert status == 200 and json.loads(body)["status"] == "ok"
    # From there on the connection is aiohttp's: a polling request on it still works.
    sock.sendall(request("POST", path, b'42/chat,2["join",{"room":"s"}]'))
    assert read_response(sock, buf)[2] == b"ok"
    sock.close()
    after = requests_by_path(server)
    assert after["lean"] - before["lean"] == 3  # the POST, the GET, and the POST through aiohttp's front
    assert after["app"] - before["app"] == 2  # /healthz and the /metrics read of `before`


@pytest.mark.parametrize("raw, expected", [
    (b"NOT HTTP AT ALL\r\n\r\n", 400),  # malformed
    (b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n", 400),
    (b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\n"
     + b"".join(b"X-H%d: v\r\n" % i for i in range(200)) + b"\r\n", 400),  # more headers than aiohttp's 128
    (b"GET /socket.io/?EIO=4&transport=polling HTTP/1.0\r\n\r\n", 200),  # HTTP/1.0: aiohttp's
    (b"OPTIONS /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n", 200),
    (b"GET /socket.io/?EIO=4&transport=polling&j=0 HTTP/1.1\r\nHost: x\r\n\r\n", 200),  # JSONP
    (b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\nHost: x\n\n", 400),  # bare LFs: aiohttp refuses
])
def test_everything_unusual_is_answered_by_aiohttp(server, raw, expected):
    # (aiohttp's own front may still serve an HTTP/1.0 or bare-LF handshake as a lean one)
    sock = connect(server)
    sock.sendall(raw)
    status, _, _ = read_response(sock, bytearray())
    sock.close()
    assert status == expected
    assert healthy(server)


def test_chunked_and_expect_bodies_go_to_aiohttp_and_are_served(server):
    sid, path = joined(server)
    sock = connect(server)
    buf = bytearray()
    chunked = request("POST", path, b"1e\r\n" + b'42/chat,1["join",{"room":"r"}]' + b"\r\n0\r\n\r\n",
                      headers={"Transfer-Encoding": "chunked"})
    sock.sendall(chunked)
    assert read_response(sock, buf)[:3:2] == (200, b"ok")
    sock.close()
    sock = connect(server)
    buf = bytearray()
    body = b'42/chat,2["join",{"room":"s"}]'
    sock.sendall(request("POST", path, headers={"Expect": "100-continue", "Content-Length": str(len(body))}))
    # aiohttp's front answers polling requests before its router, whose expect handler sends
    # "100 Continue": a client sends the body after waiting a moment for it, as curl does.
    sock.settimeout(1.0)
    try:
        buf += sock.recv(65536)
    except socket.timeout:
        pass
    sock.settimeout(5.0)
    if buf:
        assert read_response(sock, buf)[0] == 100
    sock.sendall(body)
    assert read_response(sock, buf)[:3:2] == (200, b"ok")
    sock.sendall(request("GET", path))
    assert read_response(sock, buf)[2].startswith(b"43/chat,1[")
    sock.close()


def test_a_declared_body_over_the_limit_gets_413_and_the_session_ends(server):
    sid, path = joined(server)
    sock = connect(server)
    sock.sendall(request("POST", path, headers={"Content-Length": "5000000"}) + b"4" * 1000)
    status, headers, body = read_response(sock, bytearray())
    assert status == 413 and headers["connection"] == "close" and b"too large" in body
    sock.close()
    assert server.get(path)[0] == 400  # the session is gone
    assert healthy(server)


def test_slow_heads_and_bodies_get_408(servers, tmp_path):
    config = tmp_path / "slow.toml"
    config.write_text("[limits]\nbody_timeout = 1.0\n")
    server = servers(args=["--config", str(config)])
    sid, path = joined(server)
    body_sock = connect(server, timeout=20)
    body_sock.sendall(request("POST", path, headers={"Content-Length": "10"}) + b"42")
    head_sock = connect(server, timeout=20)
    head_sock.sendall(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    status, headers, body = read_response(body_sock, bytearray())
    assert status == 408 and headers["connection"] == "close" and time.monotonic() - started < 5
    assert closed(body_sock)
    assert server.get(path)[0] == 400  # the session ended, as on aiohttp's path
    status, headers, _ = read_response(head_sock, bytearray())
    assert status == 408 and headers["connection"] == "close"
    assert 8 < time.monotonic() - started < 15  # HEAD_TIMEOUT, 10 s
    assert closed(head_sock)
    assert healthy(server)


def test_clients_closing_mid_request_or_mid_poll_leave_the_node_serving(server):
    sid, path = joined(server)
    for partial in (b"GET /socket.io/?EIO=4&trans",
                    request("POST", path, headers={"Content-Length": "100"}) + b"4"):
        sock = connect(server)
        sock.sendall(partial)
        time.sleep(0.1)
        sock.close()
    # A long-poll whose client goes away: what is queued meanwhile waits for the next poll.
    sock = connect(server)
    sock.sendall(request("GET", path))
    time.sleep(0.3)
    sock.close()
    time.sleep(0.2)
    other = connect(server)
    buf = bytearray()
    other.sendall(request("POST", path, b'42/chat,1["join",{"room":"r"}]'))
    assert read_response(other, buf)[2] == b"ok"
    other.sendall(request("GET", path))
    status, _, body = read_response(other, buf)
    assert status == 200 and b"43/chat,1[" in body
    other.close()
    assert healthy(server)


def test_bytes_sent_while_a_long_poll_waits_wait_behind_it(server):
    sid, path = joined(server)
    sock = connect(server)
    buf = bytearray()
    sock.sendall(request("GET", path))
    time.sleep(0.2)
    # Pipelined behind the pending poll: a page request, then a flood (bounded: reading pauses).
    sock.sendall(request("GET", "/healthz"))
    sock.sendall(b"X" * 2_000_000)
    other = connect(server)
    other.sendall(request("POST", path, b'42/chat,1["join",{"room":"r"}]'))
    assert read_response(other, bytearray())[2] == b"ok"
    other.close()
    status, _, body = read_response(sock, buf)
    assert status == 200 and b"43/chat,1[" in body
    # aiohttp gets the page request and the flood's first megabyte in one read: it answers
    # the page, or only the flood (its parser drops what it parsed with a bad message), 400
    statuses = [read_response(sock, buf)[0]]
    if statuses[0] == 200:
        statuses.append(read_response(sock, buf)[0])
    assert statuses[-1] == 400
    assert closed(sock)
    sock.close()
    assert healthy(server)


def test_shutdown_answers_a_pending_long_poll_and_closes_idle_connections(servers):
    server = servers()
    sid, path = joined(server)
    idle = connect(server)
    idle.sendall(request("GET", "/socket.io/?EIO=4&transport=polling"))
    assert read_response(idle, bytearray())[0] == 200
    poll = connect(server, timeout=15)
    poll.sendall(request("GET", path))
    time.sleep(0.3)
    started = time.monotonic()
    assert server.terminate(timeout=15) == 0
    assert time.monotonic() - started < 10
    status, headers, body = read_response(poll, bytearray())
    assert status == 200 and headers["connection"] == "close"
    assert re.match(rb"^[0-9]", body) or body == b""
    assert closed(poll) and closed(idle)


def test_a_large_answer_is_compressed_as_the_client_accepts(servers):
    import gzip
    server = servers(env={"BENCH_NAMESPACE": "true"})
    sid = handshake(server)
    path = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
    sock = connect(server)
    buf = bytearray()
    sock.sendall(request("POST", path, b"40/bench,"))
    assert read_response(sock, buf)[2] == b"ok"
    sock.sendall(request("GET", path))
    assert read_response(sock, buf)[2].startswith(b"40/bench,")
    sock.sendall(request("POST", path, b'42/bench,7["echo","' + b"x" * 5000 + b'"]'))
    assert read_response(sock, buf)[2] == b"ok"
    sock.sendall(request("GET", path, headers={"Accept-Encoding": "br;q=1, gzip;q=0.8"}))
    status, headers, body = read_response(sock, buf)
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert gzip.decompress(body).startswith(b'43/bench,7["' + b"x" * 100)
    sock.close()


def test_every_accepted_connection_has_tcp_keep_alive(server):
    """The listening socket carries SO_KEEPALIVE and Linux copies it to each accepted
    connection (HttpFront no longer sets it per connection): the kernel's keep-alive timer
    runs on the server's side of a WebSocket and of a polling connection alike."""
    upgrade = (b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
               b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               b"Sec-WebSocket-Version: 13\r\n\r\n")
    poll = b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n"
    clients = []
    for request in (upgrade, poll):
        sock = connect(server)
        sock.sendall(request)
        assert sock.recv(65536).split(b"\r\n")[0].split()[1] in (b"101", b"200")
        clients.append(sock)
    ours = {f"127.0.0.1:{s.getsockname()[1]}" for s in clients}
    # ss -o: the server's side of each connection, with its timer ("keepalive" when it is on).
    lines = subprocess.run(["ss", "-tnoH", "state", "established", f"( sport = :{server.port} )"],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    sides = {line.split()[3]: line for line in lines if line.split()[3] in ours}
    assert sides.keys() == ours, lines
    assert all("timer:(keepalive" in line for line in sides.values()), lines
    for sock in clients:
        sock.close()
