"""Long-polling requests take the lean path (server/polling.py), everything else the application:
rt_http_requests_total{path} counts both, and the lean answers carry what the application's did."""

from __future__ import annotations

import http.client
import json
import re

from server.polling import parse_query


def requests_by_path(server) -> dict[str, float]:
    """rt_http_requests_total by path, read from /metrics (that request itself counts as app)."""
    status, body = server.get("/metrics")
    assert status == 200
    found = dict(re.findall(r'^rt_http_requests_total\{path="(\w+)"\} ([0-9.e+]+)$', body, re.M))
    return {path: float(value) for path, value in found.items()}


def call(server, method: str, path: str, body: str | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read().decode()
    conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data


async def test_polling_requests_take_the_lean_path_and_the_rest_the_application(server, js):
    before = requests_by_path(server)
    assert set(before) == {"lean", "app"}
    # Pages, probes and the API stay on the application; a new WebSocket session takes the lean
    # WebSocket (server/websocket.py). (First, while no polling client is connected: a live
    # one's long-poll GETs go on by themselves.)
    assert server.get("/healthz")[0] == 200
    assert server.get("/")[0] == 200
    await js.connect("w", server.url + "/chat", transports=["websocket"])
    assert (await js.emit("w", "join", {"room": "r"}))["ok"]
    mid = requests_by_path(server)
    assert mid["app"] - before["app"] >= 3  # /metrics, /healthz, /
    assert mid["lean"] == before["lean"] + 1  # the WebSocket's one request

    state = await js.connect("p", server.url + "/chat", transports=["polling"])
    assert state["connected"] and state["transport"] == "polling"
    for i in range(5):
        assert (await js.emit("p", "join", {"room": f"r{i}"}))["ok"]
    after = requests_by_path(server)
    # handshake, CONNECT POST, its GET, then a POST and a GET per ack at least
    assert after["lean"] - mid["lean"] >= 12
    assert after["app"] - mid["app"] == 1  # the /metrics request that read `mid`


def test_lean_answers_match_the_protocol_and_refusals_go_to_the_application(server):
    origin = f"http://127.0.0.1:{server.port}"
    before = requests_by_path(server)
    status, headers, body = call(server, "GET", "/socket.io/?EIO=4&transport=polling&t=x1",
                                 headers={"Origin": origin})
    assert status == 200
    assert headers["content-type"] == "text/plain; charset=UTF-8"
    assert headers["access-control-allow-origin"] == origin
    assert headers["access-control-allow-credentials"] == "true"
    opened = json.loads(body[1:])
    assert body[0] == "0" and opened["upgrades"] == ["websocket"] and opened["maxPayload"] > 0
    sid = opened["sid"]
    path = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
    status, headers, body = call(server, "POST", path, "40/chat,", headers={"Content-Type": "text/plain"})
    assert (status, body, headers["content-type"]) == (200, "ok", "text/plain")
    assert "access-control-allow-origin" not in headers and headers["access-control-allow-credentials"] == "true"
    status, _, body = call(server, "GET", path)
    assert status == 200 and body.startswith('40/chat,{"sid":')
    assert requests_by_path(server)["lean"] - before["lean"] == 3

    # Out of the ordinary: answered by the application, as before the lean path.
    checks = [
        ("GET", "/socket.io/?EIO=4&transport=polling", {"Origin": "http://evil.example"}, 400, "not an accepted origin"),
        ("GET", "/socket.io/?EIO=3&transport=polling", {}, 400, "unsupported version"),
        ("GET", "/socket.io/?EIO=4&transport=carrier-pigeon", {}, 400, "Invalid transport"),
        ("GET", "/socket.io/?EIO=4&transport=polling&sid=nosuchsession", {}, 400, "Invalid session"),
        ("POST", "/socket.io/?EIO=4&transport=polling&sid=nosuchsession", {}, 400, "Invalid session"),
        ("OPTIONS", "/socket.io/?EIO=4&transport=polling", {"Origin": origin}, 200, ""),
        ("DELETE", path, {}, 400, "Bad Request"),
    ]
    before = requests_by_path(server)
    for method, target, extra, expected, text in checks:
        status, _, body = call(server, method, target, headers=extra)
        assert (status, text in body) == (expected, True), (method, target, status, body)
    after = requests_by_path(server)
    assert after["lean"] == before["lean"]
    assert after["app"] - before["app"] == len(checks) + 1  # and the /metrics read of `before`

    # A body over max_payload is refused on the lean path too (413), and the session ends.
    status, headers, body = call(server, "POST", path, "4" + "x" * 2_000_000)
    assert status == 413 and headers.get("connection") == "close"
    status, _, body = call(server, "GET", path)
    assert status == 400


def test_the_query_is_read_as_the_application_reads_it():
    assert parse_query("EIO=4&transport=polling&t=Pq1&sid=abc") == {
        "EIO": "4", "transport": "polling", "t": "Pq1", "sid": "abc"}
    assert parse_query("sid=a%2Bb&sid=second&x=1+2") == {"sid": "a+b", "x": "1 2"}  # first value, decoded
    assert parse_query("") == {}
    assert parse_query("transport") is None  # no "=": the application decides
    assert parse_query("sid=%ff") is None  # not UTF-8
