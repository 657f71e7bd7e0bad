"""The HTTP server API under /api/v1/ (issue 14): real server processes, redis-server and the
official JS client on the receiving end; raw aiohttp requests for the API itself.

Every answer that succeeds is validated against the schema the OpenAPI document gives for it.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest

from harness import ROOT
from test_recovery import assert_exactly_once_in_order

KEY = "billing-key-0123456789abcdefghij"
OTHER = "other-key-0123456789abcdefghijkl"
ENV = {"API_KEYS": f"billing:{KEY},other:{OTHER}"}
SCHEMAS = {"/publish": "PublishResult", "/batch": "BatchResult", "/history": "HistoryResult",
           "/presence": "PresenceResult", "/sockets": "SocketsResult", "/join": "CountResult",
           "/leave": "CountResult", "/disconnect": "CountResult"}


def document() -> dict[str, Any]:
    from server.api_schema import openapi_document

    return openapi_document()


def conforms(path: str, status: int, body: Any) -> None:
    """``body`` is what the OpenAPI document says ``path`` answers with ``status``."""
    doc = document()
    name = SCHEMAS[path] if status == 200 else "Error"
    schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    jsonschema.Draft202012Validator(schema).validate(body)


async def call(srv, method: str, path: str, body: Any = None, key: str | None = KEY, raw: bytes | None = None,
               query: dict[str, str] | None = None, headers: dict[str, str] | None = None,
               check: bool = True) -> tuple[int, Any, Any]:
    """One API request; returns (status, JSON body, headers)."""
    sent = dict(headers or {})
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    async with aiohttp.ClientSession() as session:
        async with session.request(method, f"{srv.url}/api/v1{path}", data=data, params=query,
                                   headers=sent) as r:
            answer = await r.json(content_type=None)
            if check and path in SCHEMAS:
                conforms(path, r.status, answer)
            return r.status, answer, r.headers


async def publish(srv, **body: Any) -> dict[str, Any]:
    status, answer, _ = await call(srv, "POST", "/publish", body)
    assert status == 200, answer
    return answer


async def guest_pair(js, name: str, first_url: str, second_url: str) -> str:
    """Two connections of one guest user (the second presents the first's guest token)."""
    await js.connect(name, first_url + "/chat", transports=["websocket"])
    me = await js.emit(name, "whoami")
    await js.connect(name + "2", second_url + "/chat", transports=["websocket"], auth={"guestToken": me["guestToken"]})
    assert (await js.emit(name + "2", "whoami"))["user"] == me["user"]
    return me["user"]


async def sid_of(js, name: str) -> str:
    return (await js.state(name))["sid"]


async def settle(js, *names: str) -> None:
    """Let anything still in flight arrive (a duplicate, a stray delivery) before counting."""
    await asyncio.sleep(0.3)
    for name in names:
        await js.state(name)


def texts(events: list[dict]) -> list[Any]:
    return [e["args"][0]["n"] for e in events]


# ---------------------------------------------------------------------- off, keys, log, metrics


async def test_api_is_off_without_keys(server):
    for method, path in (("POST", "/publish"), ("GET", "/openapi.json"), ("GET", "/nothing-here")):
        status, answer, _ = await call(server, method, path, {"namespace": "/chat"}, check=False)
        assert status == 404, answer
        assert answer["error"]["code"] == "api_disabled"
        assert "disabled" in answer["error"]["message"] and "[api] keys" in answer["error"]["message"]


async def test_no_key_and_wrong_key_are_401_and_no_key_is_ever_logged(servers):
    srv = servers(env=ENV)
    body = {"namespace": "/chat", "room": "r", "event": "e"}
    wrong = "wrong-key-ABCDEFGHIJKLMNOPQRSTUV"
    for key, headers in ((None, {}), (wrong, {}), (None, {"Authorization": f"Basic {KEY}"}),
                         (None, {"Authorization": "Bearer"})):
        status, answer, got = await call(srv, "POST", "/publish", body, key=key, headers=headers)
        assert status == 401, answer
        assert answer["error"]["code"] == "unauthorized"
        assert got["WWW-Authenticate"].startswith("Bearer")
    status, answer, _ = await call(srv, "POST", "/publish", body)
    assert status == 200, answer
    status, _, _ = await call(srv, "POST", "/publish", body, key=OTHER)
    assert status == 200
    await asyncio.sleep(0.2)
    log = srv.output()
    assert "api key=billing POST /api/v1/publish -> 200" in log
    assert "api key=other POST /api/v1/publish -> 200" in log
    for secret in (KEY, OTHER, wrong):
        assert secret not in log
    assert "Traceback" not in log


async def test_requests_without_a_valid_key_cannot_flood_the_log(servers):
    srv = servers(env=ENV)
    started = time.monotonic()
    for i in range(40):
        status, _, _ = await call(srv, "POST", "/publish", {}, key=f"made-up-key-{i:04d}-abcdefghijklmn")
        assert status == 401
    elapsed = time.monotonic() - started
    await publish(srv, namespace="/chat", room="r", event="e")  # an authenticated request is always logged
    await asyncio.sleep(0.2)
    lines = [line for line in srv.output().splitlines() if "server.api" in line]
    unauthenticated = [line for line in lines if "api key=- " in line]
    # at most one line per second (UNAUTHENTICATED_LOG_INTERVAL) for requests anyone can send
    assert 1 <= len(unauthenticated) <= elapsed + 1, unauthenticated
    assert sum(1 for line in lines if "api key=billing POST /api/v1/publish -> 200" in line) == 1
    assert "made-up-key" not in srv.output()


async def test_requests_are_counted_per_key_route_and_status(servers):
    srv = servers(env=ENV)
    await publish(srv, namespace="/chat", room="r", event="e")
    await call(srv, "POST", "/publish", {"namespace": "/chat"})
    await call(srv, "POST", "/publish", {}, key=None)
    _, metrics = srv.get("/metrics")
    assert 'rt_api_requests_total{key="billing",route="/api/v1/publish",status="200"} 1.0' in metrics
    assert 'rt_api_requests_total{key="billing",route="/api/v1/publish",status="400"} 1.0' in metrics
    assert 'rt_api_requests_total{key="-",route="/api/v1/publish",status="401"} 1.0' in metrics


async def test_rate_limit_per_key_and_hashed_keys(servers, tmp_path: Path):
    from server.api_keys import hash_key

    ops = "ops-key-0123456789abcdefghijklmn"
    config = tmp_path / "api.toml"
    # 0.01 requests per second: nothing refills during the test.
    config.write_text(f'[api]\nkeys = [{{name = "billing", key = "{KEY}"}}, {{name = "ops", key_hash = '
                      f'"{hash_key(ops)}"}}]\nrequests_per_second = 0.01\nburst = 3\nmax_batch_commands = 3\n')
    srv = servers(args=["--config", str(config)])
    body = {"namespace": "/chat", "room": "r", "event": "e"}
    for _ in range(3):
        await publish(srv, **body)
    status, answer, headers = await call(srv, "POST", "/publish", body)
    assert status == 429 and answer["error"]["code"] == "rate_limited", answer
    assert int(headers["Retry-After"]) >= 1
    # another key has its own allowance; a hashed key is recognised (and again, from the cache)
    for _ in range(2):
        status, answer, _ = await call(srv, "POST", "/publish", body, key=ops)
        assert status == 200, answer
    status, _, _ = await call(srv, "POST", "/publish", body, key=ops[:-1] + "X")
    assert status == 401
    # a batch takes one request per command: 2 commands with 1 left is refused whole, nothing runs
    batch = {"commands": [{"method": "publish", "params": body}] * 2}
    status, answer, headers = await call(srv, "POST", "/batch", batch, key=ops)
    assert status == 429 and "Retry-After" in headers, answer
    assert "ops-key" not in srv.output() and KEY not in srv.output()


def test_the_hash_command_makes_a_key_hash_the_config_takes(tmp_path: Path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "server.api_keys", "hash"], input=KEY + "\n", cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    digest = out.stdout.strip()
    assert digest.startswith("scrypt$") and KEY not in digest
    config = tmp_path / "hashed.toml"
    config.write_text(f'[api]\nkeys = [{{name = "billing", key_hash = "{digest}"}}]\n')
    from server.api_keys import KeyRing
    from server.config import load_config

    ring = KeyRing(load_config(config, environ={"PAGES": "false"}).api.keys)
    assert asyncio.run(ring.name_of(KEY)) == "billing" and asyncio.run(ring.name_of(OTHER)) is None
    short = subprocess.run([sys.executable, "-m", "server.api_keys", "hash"], input="short\n", cwd=ROOT,
                           capture_output=True, text=True, timeout=30)
    assert short.returncode == 2 and "at least 24" in short.stderr


@pytest.mark.parametrize("value,fragment", [
    ("billing:short", "api.keys[0].key (from $API_KEYS): must be 24 to 256 characters long, got 5"),
    (f"billing:{KEY},billing:{OTHER}", "api.keys[1].name (from $API_KEYS): the name 'billing' is used twice"),
    (f"billing:{KEY},other:{KEY}", "api.keys[1].key (from $API_KEYS): the same key as api.keys[0] (billing)"),
    (f"billing{KEY}", "api.keys (from $API_KEYS): entry 1 is not name:key"),
    (f"bill ing:{KEY}", "api.keys[0].name (from $API_KEYS): 1-64 characters"),
    ("billing:" + "é" * 30, "api.keys[0].key (from $API_KEYS): may hold only letters, digits"),
])
def test_bad_api_keys_stop_startup_without_showing_the_key(value, fragment):
    from test_config import run_server

    out = run_server({"API_KEYS": value})
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], out.stderr
    secrets = [v.partition(":")[2] for v in value.split(",")]
    assert not any(s and s in out.stderr for s in secrets), out.stderr


def test_api_config_file_errors(tmp_path: Path):
    from server.config import ConfigError, load_config

    cases = [
        ('[api]\nkeys = [{name = "a", key = "%s", key_hash = "scrypt$00$00"}]\n' % KEY, "set exactly one of key"),
        ('[api]\nkeys = [{name = "a", key_hash = "md5$x"}]\n', "api.keys[0].key_hash"),
        ('[api]\nkeys = [{name = "a", secret = "x"}]\n', "unknown field(s) secret"),
        ('[api]\nburst = 10\nmax_batch_commands = 11\n', "api.max_batch_commands"),
        ('[api]\nmax_body_bytes = 10\n', "api.max_body_bytes"),
    ]
    for text, fragment in cases:
        path = tmp_path / "c.toml"
        path.write_text(text)
        with pytest.raises(ConfigError) as err:
            load_config(path, environ={"PAGES": "false"})
        assert fragment in str(err.value), (text, err.value)
        assert KEY not in str(err.value)


# ---------------------------------------------------------------------- publishing, with the JS client


def position(offset_string: str) -> int:
    """The channel offset an event's offset string names ("<offset>~<channel tag>")."""
    offset, _, tag = offset_string.partition("~")
    assert len(tag) == 8, offset_string
    return int(offset)


def with_position(args: list) -> list:
    """An event's arguments with its trailing offset string replaced by the offset it names."""
    return [*args[:-1], position(args[-1])]


async def test_publish_to_a_room_a_socket_and_a_user_on_every_node(servers, js, redis_url):
    env = {**ENV, "REDIS_URL": redis_url}
    n1, n2 = servers(env=env), servers(env=env)
    user_a = await guest_pair(js, "a", n1.url, n2.url)  # "a" on node 1, "a2" on node 2: one user
    await js.connect("b", n2.url + "/chat", transports=["polling"])
    await js.connect("c", n1.url + "/chat", transports=["websocket"])  # a bystander in no room
    for name in ("a", "b"):
        assert (await js.emit(name, "join", {"room": "r"}))["ok"]

    to_room = await publish(n1, namespace="/chat", room="r", event="news", args=[{"n": 1}, "two"])
    assert to_room["duplicate"] is False and to_room["epoch"]
    for name in ("a", "b"):
        [event] = await js.wait(name, "news", 1)
        # the offset rides last, as for any durable event
        assert with_position(event["args"]) == [{"n": 1}, "two", to_room["offset"]]

    to_socket = await publish(n2, namespace="/chat", to=await sid_of(js, "b"), event="just-b", args=[{"n": 2}])
    [event] = await js.wait("b", "just-b", 1)
    assert with_position(event["args"]) == [{"n": 2}, to_socket["offset"]]

    to_user = await publish(n2, namespace="/chat", user=user_a, event="for-a", args=[{"n": 3}])
    for name in ("a", "a2"):  # both connections of the user, one on each node
        [event] = await js.wait(name, "for-a", 1)
        assert with_position(event["args"]) == [{"n": 3}, to_user["offset"]]

    await settle(js, "a", "a2", "b", "c")
    assert [e["event"] for e in await js.events("c") if e["event"] in ("news", "just-b", "for-a")] == []
    assert await js.events("a2", "news") == [] and await js.events("a", "just-b") == []
    assert await js.events("b", "for-a") == []
    # each went to its own channel (the room's, the socket's, the user's): each its first publication
    # after the joins' presence events in the room
    assert to_socket["offset"] == 1 and to_user["offset"] == 1 and to_room["offset"] >= 1


async def test_an_api_publish_is_recovered_after_a_cut(servers, js, proxies):
    srv = servers(env={**ENV, "PING_INTERVAL": "1", "PING_TIMEOUT": "1"})
    proxy = await proxies([srv.port])
    first = await js.connect("sub", proxy.url + "/chat", transports=["websocket"])
    assert (await js.emit("sub", "join", {"room": "r"}))["ok"]
    before = await publish(srv, namespace="/chat", room="r", event="message", args=[{"text": "before"}])
    await js.wait("sub", "message", 1)
    proxy.down()
    await js.call("waitDisconnects", name="sub", count=1)
    during = [await publish(srv, namespace="/chat", room="r", event="message", args=[{"text": f"gap{i}"}])
              for i in range(3)]
    proxy.up()
    state = await js.call("waitConnects", name="sub", count=2)
    assert state["recovered"] is True and state["sid"] == first["sid"], state
    after = await publish(srv, namespace="/chat", room="r", event="message", args=[{"text": "after"}])
    await js.wait("sub", "message", 5)
    await settle(js, "sub")
    events = await js.events("sub", "message")
    assert_exactly_once_in_order(events, ["before", "gap0", "gap1", "gap2", "after"])
    assert [position(e["args"][-1]) for e in events] == [r["offset"] for r in (before, *during, after)]


async def test_an_idempotency_key_retried_five_times_publishes_once(servers, js, redis_url):
    env = {**ENV, "REDIS_URL": redis_url}
    n1, n2 = servers(env=env), servers(env=env)
    await js.connect("sub", n1.url + "/chat", transports=["websocket"])
    assert (await js.emit("sub", "join", {"room": "r"}))["ok"]
    body = {"namespace": "/chat", "room": "r", "event": "paid", "args": [{"n": 1}], "idempotency_key": "order-42"}
    # five tries, alternating nodes (a retry through a load balancer), two of them at the same time
    answers = [await publish(n1, **body), await publish(n2, **body)]
    answers += await asyncio.gather(publish(n1, **body), publish(n2, **body))
    answers.append(await publish(n1, **body))
    assert answers[0]["duplicate"] is False
    assert all(a["duplicate"] is True for a in answers[1:]), answers
    assert {(a["offset"], a["epoch"]) for a in answers} == {(answers[0]["offset"], answers[0]["epoch"])}
    # the same key for another event is a conflict, not a silent replay of the first
    status, answer, _ = await call(n2, "POST", "/publish", {**body, "args": [{"n": 2}]})
    assert status == 409 and answer["error"] == {"code": "idempotency_key_reused", "field": "idempotency_key",
                                                 "message": answer["error"]["message"]}, answer
    # keys belong to their API key: another API key's "order-42" is its own publish
    status, other, _ = await call(n1, "POST", "/publish", body, key=OTHER)
    assert status == 200 and other["duplicate"] is False and other["offset"] != answers[0]["offset"]
    await js.wait("sub", "paid", 2)
    await settle(js, "sub")
    assert [position(e["args"][-1]) for e in await js.events("sub", "paid")] == [answers[0]["offset"],
                                                                                 other["offset"]]


async def test_batch_runs_its_commands_in_order(servers, js):
    srv = servers(env=ENV)
    await js.connect("sub", srv.url + "/chat", transports=["websocket"])
    sid = await sid_of(js, "sub")
    commands = [
        {"method": "publish", "params": {"namespace": "/chat", "to": sid, "event": "step", "args": [{"n": 1}]}},
        {"method": "publish", "params": {"namespace": "/chat", "room": "r", "event": "step", "args": "no"}},
        {"method": "join", "params": {"namespace": "/chat", "room": "r", "sid": sid}},
        {"method": "publish", "params": {"namespace": "/chat", "room": "r", "event": "step", "args": [{"n": 2}]}},
        {"method": "sockets", "params": {"namespace": "/chat", "room": "r"}},
        {"method": "fly", "params": {}},
    ]
    status, answer, _ = await call(srv, "POST", "/batch", {"commands": commands})
    assert status == 200, answer
    results = answer["results"]
    assert [r["status"] for r in results] == [200, 400, 200, 200, 200, 400], results
    assert results[1]["error"]["field"] == "args" and results[5]["error"]["code"] == "unknown_method"
    assert results[2]["result"] == {"count": 1}
    assert [s["sid"] for s in results[4]["result"]["sockets"]] == [sid]
    offsets = [results[i]["result"]["offset"] for i in (0, 3)]
    assert offsets == [1, 1]  # each the first publication of its channel: the socket's, the room's
    events = await js.wait("sub", "step", 2)
    assert texts(events) == [1, 2] and [position(e["args"][-1]) for e in events] == offsets
    # Membership counts when the event is delivered (by each node's log follower), so a leave is
    # sent once the events before it have arrived.
    status, answer, _ = await call(srv, "POST", "/batch", {"commands": [
        {"method": "leave", "params": {"namespace": "/chat", "room": "r", "sid": sid}},
        {"method": "publish", "params": {"namespace": "/chat", "room": "r", "event": "step", "args": [{"n": 3}]}},
        {"method": "publish", "params": {"namespace": "/chat", "to": sid, "event": "step", "args": [{"n": 4}]}}]})
    assert [r["status"] for r in answer["results"]] == [200, 200, 200]
    assert answer["results"][0]["result"] == {"count": 1}
    await js.wait("sub", "step", 3)
    await settle(js, "sub")
    assert texts(await js.events("sub", "step")) == [1, 2, 4]
    for bad in ({"commands": []}, {"commands": "publish"}, {"commands": [{"method": "publish"}] * 101},
                {"orders": []}):
        status, answer, _ = await call(srv, "POST", "/batch", bad)
        assert status == 400 and answer["error"]["field"] in ("commands", "orders"), answer


# ---------------------------------------------------------------------- reading: history, presence, sockets


async def test_history_pages_through_a_rooms_messages(servers, js):
    srv = servers(env=ENV)
    await js.connect("w", srv.url + "/chat", transports=["websocket"])
    assert (await js.emit("w", "join", {"room": "r"}))["ok"]
    seqs = []
    for i in range(25):
        ack = await js.emit("w", "message", {"room": "r", "text": f"m{i}"})
        seqs.append(ack["seq"])
    query = {"namespace": "/chat", "room": "r"}
    status, newest, _ = await call(srv, "GET", "/history", query={**query, "limit": "10"})
    assert status == 200, newest
    assert [e["args"][0]["text"] for e in newest["events"]] == [f"m{i}" for i in range(15, 25)]
    assert newest["offset"] == seqs[-1] and newest["complete"] is True
    # page forward from the start, 10 at a time
    got, since, pages = [], 0, 0
    while True:
        status, page, _ = await call(srv, "GET", "/history", query={**query, "since": since, "limit": "10"})
        assert status == 200 and page["complete"] is True and page["epoch"] == newest["epoch"], page
        if not page["events"]:
            break
        pages += 1
        got += page["events"]
        since = page["events"][-1]["offset"]
    assert pages == 3
    assert [e["args"][0]["text"] for e in got] == [f"m{i}" for i in range(25)]
    assert [e["offset"] for e in got] == seqs and {e["event"] for e in got} == {"message"}
    for bad, field in (({"since": "yesterday"}, "since"), ({"limit": "0"}, "limit"), ({"limit": "x"}, "limit"),
                       ({"namespace": "/game"}, "namespace"), ({"room": ""}, "room"), ({"rooms": "r"}, "rooms")):
        status, answer, _ = await call(srv, "GET", "/history", query={**query, **bad})
        assert status == 400 and answer["error"]["field"] == field, (bad, answer)


async def test_presence_and_sockets_cover_every_node(servers, js, redis_url):
    env = {**ENV, "REDIS_URL": redis_url}
    n1, n2 = servers(env=env), servers(env=env)
    await js.connect("u1", n1.url + "/chat", transports=["websocket"])
    await js.connect("u2", n2.url + "/chat", transports=["polling"])
    await js.connect("u3", n2.url + "/chat", transports=["websocket"])
    users = {}
    for name in ("u1", "u2"):
        assert (await js.emit(name, "join", {"room": "r"}))["ok"]
        users[name] = (await js.emit(name, "whoami"))["user"]
    status, answer, _ = await call(n2, "GET", "/presence", query={"namespace": "/chat", "room": "r"})
    assert status == 200 and sorted(m["user"] for m in answer["members"]) == sorted(users.values()), answer
    status, answer, _ = await call(n1, "GET", "/sockets", query={"namespace": "/chat", "room": "r"})
    assert status == 200, answer
    listed = {s["sid"]: s for s in answer["sockets"]}
    assert set(listed) == {await sid_of(js, "u1"), await sid_of(js, "u2")}
    assert {s["node"] for s in listed.values()} == {f"node-{n1.port}", f"node-{n2.port}"}
    assert all(s["rooms"] == ["r"] for s in listed.values())
    assert {s["user"] for s in listed.values()} == set(users.values())
    status, answer, _ = await call(n1, "GET", "/sockets", query={"namespace": "/chat"})
    assert len(answer["sockets"]) == 3 and answer["truncated"] is False
    status, answer, _ = await call(n1, "GET", "/sockets", query={"namespace": "/chat", "limit": "2"})
    assert len(answer["sockets"]) == 2 and answer["truncated"] is True
    status, answer, _ = await call(n1, "GET", "/presence", query={"namespace": "/collab", "room": "r"})
    assert status == 400 and answer["error"]["code"] == "not_supported" and answer["error"]["field"] == "namespace"


# ---------------------------------------------------------------------- changing sockets


async def test_join_leave_and_disconnect_a_user_on_every_node(servers, js, redis_url):
    env = {**ENV, "REDIS_URL": redis_url}
    n1, n2 = servers(env=env), servers(env=env)
    user_a = await guest_pair(js, "a", n1.url, n2.url)
    await js.connect("c", n2.url + "/chat", transports=["websocket"])  # a bystander
    assert (await js.emit("c", "join", {"room": "news"}))["ok"]

    status, answer, _ = await call(n1, "POST", "/join", {"namespace": "/chat", "room": "news", "user": user_a})
    assert status == 200 and answer == {"count": 2}, answer
    first = await publish(n2, namespace="/chat", room="news", event="headline", args=[{"n": 1}])
    for name in ("a", "a2", "c"):
        [event] = await js.wait(name, "headline", 1)
        assert position(event["args"][-1]) == first["offset"]
    status, answer, _ = await call(n2, "POST", "/leave", {"namespace": "/chat", "room": "news",
                                                          "sid": await sid_of(js, "a")})
    assert status == 200 and answer == {"count": 1}, answer
    await publish(n1, namespace="/chat", room="news", event="headline", args=[{"n": 2}])
    await js.wait("a2", "headline", 2)
    await js.wait("c", "headline", 2)

    status, answer, _ = await call(n2, "POST", "/disconnect", {"user": user_a})
    assert status == 200 and answer == {"count": 2}, answer
    for name in ("a", "a2"):
        state = await js.call("waitDisconnects", name=name, count=1)
        assert state["disconnects"] == ["io server disconnect"], state  # on purpose: not recoverable
    await settle(js, "a", "a2", "c")
    assert (await js.state("a"))["connected"] is False and (await js.state("a2"))["connected"] is False
    assert texts(await js.events("a", "headline")) == [1]
    # the bystander was not touched, and still receives
    assert (await js.state("c"))["connected"] is True
    await publish(n1, namespace="/chat", room="news", event="headline", args=[{"n": 3}])
    assert texts(await js.wait("c", "headline", 3)) == [1, 2, 3]
    # by socket id, in one namespace
    status, answer, _ = await call(n1, "POST", "/disconnect", {"namespace": "/chat", "sid": await sid_of(js, "c")})
    assert status == 200 and answer == {"count": 1}
    await js.call("waitDisconnects", name="c", count=1)
    for bad, field in (({"user": user_a, "sid": "x" * 26}, "user"), ({}, "sid"), ({"sid": "lobby"}, "sid"),
                       ({"user": ""}, "user"), ({"user": "u", "namespace": "/admin"}, "namespace")):
        status, answer, _ = await call(n1, "POST", "/disconnect", bad)
        assert status == 400 and answer["error"]["field"] == field, (bad, answer)


async def test_join_keeps_to_the_rooms_per_socket_cap(servers, js, tmp_path: Path):
    config = tmp_path / "rooms.toml"
    config.write_text("[limits]\nmax_rooms_per_socket = 2\n")
    srv = servers(env=ENV, args=["--config", str(config)])
    await js.connect("a", srv.url + "/chat", transports=["websocket"])
    await js.connect("b", srv.url + "/chat", transports=["websocket"])
    user_b = (await js.emit("b", "whoami"))["user"]
    for room in ("one", "two"):
        assert (await js.emit("a", "join", {"room": room}))["ok"]
    sid = await sid_of(js, "a")
    status, answer, _ = await call(srv, "POST", "/join", {"namespace": "/chat", "room": "three", "sid": sid})
    assert status == 409 and answer["error"]["code"] == "too_many_rooms", answer
    status, answer, _ = await call(srv, "POST", "/join", {"namespace": "/chat", "room": "two", "sid": sid})
    assert status == 200 and answer == {"count": 1}  # a room it is in already takes no place
    status, answer, _ = await call(srv, "POST", "/join", {"namespace": "/chat", "room": "three", "user": user_b})
    assert status == 200 and answer == {"count": 1}
    status, answer, _ = await call(srv, "GET", "/sockets", query={"namespace": "/chat", "room": "three"})
    assert [s["sid"] for s in answer["sockets"]] == [await sid_of(js, "b")]


# ---------------------------------------------------------------------- bad input


async def raw_post(srv, path: str, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """A request written on a raw socket (a lying Content-Length, a body sent slowly or not at all)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(b"POST /api/v1" + path.encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
                 + b"\r\n" + head + b"\r\n" + body)
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 15)
    rest = await asyncio.wait_for(reader.read(4096), 5)
    writer.close()
    return int(status_line.split()[1]), rest


async def test_bad_input_gets_a_clear_error_and_publishes_nothing(servers, js):
    srv = servers(env=ENV)
    await js.connect("sub", srv.url + "/chat", transports=["websocket"])
    assert (await js.emit("sub", "join", {"room": "r"}))["ok"]
    good = {"namespace": "/chat", "room": "r", "event": "e", "args": [{"n": 1}]}
    cases = [
        (b'{"namespace": "/chat", "room": ', 400, "invalid_json", None),
        (b"", 400, "invalid_json", None),
        (b"[1, 2]", 400, "invalid_body", None),
        (b"\xff\xfe{}", 400, "invalid_json", None),
        (b"[" * 100_000, 400, "invalid_json", None),
        ({**good, "namespace": "/nowhere"}, 400, "unknown_namespace", "namespace"),
        ({**good, "namespace": "/admin"}, 400, "unknown_namespace", "namespace"),
        ({k: v for k, v in good.items() if k != "room"}, 400, "missing_field", "room"),
        ({**good, "to": "x" * 26}, 400, "invalid_field", "to"),
        ({**good, "args": {"n": 1}}, 400, "invalid_field", "args"),
        ({**good, "args": "n"}, 400, "invalid_field", "args"),
        ({**good, "event": "disconnect"}, 400, "invalid_field", "event"),
        ({**good, "event": ""}, 400, "invalid_field", "event"),
        ({k: v for k, v in good.items() if k != "event"}, 400, "missing_field", "event"),
        ({**good, "room": "no spaces"}, 400, "invalid_field", "room"),
        ({**good, "idempotency_key": "a b"}, 400, "invalid_field", "idempotency_key"),
        ({**good, "rooms": ["r"]}, 400, "unknown_field", "rooms"),
        ({**good, "args": ["x" * 70_000]}, 413, "payload_too_large", "args"),
        ({**good, "args": ["x" * 2_000_000]}, 413, "body_too_large", None),
    ]
    for body, status, code, field in cases:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        got, answer, _ = await call(srv, "POST", "/publish", raw=raw)
        assert (got, answer["error"]["code"], answer["error"].get("field")) == (status, code, field), (body, answer)
        assert len(answer["error"]["message"]) < 300
    # a body larger than the cap is refused on its Content-Length, before any of it is read ...
    status, rest = await raw_post(srv, "/publish", b"Content-Length: 2000000\r\n")
    assert status == 413 and b"body_too_large" in rest
    # ... and a chunked one as soon as the cap is passed
    chunk = b"x" * 65536
    status, rest = await raw_post(srv, "/publish", b"Transfer-Encoding: chunked\r\n",
                                  (b"10000\r\n" + chunk + b"\r\n") * 20)
    assert status == 413 and b"body_too_large" in rest
    # wrong methods and routes are JSON errors too
    got, answer, headers = await call(srv, "GET", "/publish")
    assert got == 405 and answer["error"]["code"] == "method_not_allowed" and headers["Allow"] == "POST"
    got, answer, _ = await call(srv, "POST", "/publish/")
    assert got == 404 and answer["error"]["code"] == "not_found"

    # nothing was published by any of them; the next good publish arrives, once
    ok = await publish(srv, **good)
    [event] = await js.wait("sub", "e", 1)
    await settle(js, "sub")
    assert [with_position(e["args"]) for e in await js.events("sub", "e")] == [[{"n": 1}, ok["offset"]]]
    assert (await js.state("sub"))["connected"] is True
    assert "Traceback" not in srv.output()


async def test_redis_away_is_503_and_the_api_comes_back_with_it(servers, own_redis):
    srv = servers(env={**ENV, "REDIS_URL": own_redis.url})
    body = {"namespace": "/chat", "room": "r", "event": "e", "idempotency_key": "k-1"}
    own_redis.stop()
    for method, path, payload, query in (("POST", "/publish", body, None),
                                         ("GET", "/history", None, {"namespace": "/chat", "room": "r"})):
        status, answer, headers = await call(srv, method, path, payload, query=query)
        assert status == 503 and answer["error"]["code"] == "unavailable", answer
        assert headers["Retry-After"] == "1"
    own_redis.start()
    for _ in range(50):  # the pool reconnects on its next command
        status, answer, _ = await call(srv, "POST", "/publish", body)
        if status == 200:
            break
        await asyncio.sleep(0.2)
    assert status == 200 and answer["duplicate"] is False, answer  # the failed try claimed nothing
    assert "Traceback" not in srv.output()


async def test_a_body_that_never_arrives_is_answered_408(servers, tmp_path: Path):
    config = tmp_path / "slow.toml"
    config.write_text("[limits]\nbody_timeout = 1.0\n")
    srv = servers(env=ENV, args=["--config", str(config)])
    status, rest = await raw_post(srv, "/publish", b"Content-Length: 100\r\n", b'{"namespace"')
    assert status == 408 and b'"timeout"' in rest


# ---------------------------------------------------------------------- the OpenAPI document


async def test_openapi_document_is_valid_and_lists_exactly_the_served_routes(servers):
    from openapi_spec_validator import validate

    from server.api import ROUTES

    srv = servers(env=ENV)
    status, served_doc, _ = await call(srv, "GET", "/openapi.json")
    assert status == 200
    validate(served_doc)
    assert served_doc == document()
    documented = {(method.upper(), path) for path, item in served_doc["paths"].items() for method in item}
    assert documented == {(method, path) for method, path, _ in ROUTES}
    # every documented route is served: a request with no parameters gets an answer from the
    # route itself (200, or 400 naming what is missing), never "no such route"
    for method, path in sorted(documented):
        status, answer, _ = await call(srv, method, path, {} if method == "POST" else None, check=False)
        assert status in (200, 400), (method, path, answer)
        if status == 400:
            assert answer["error"]["code"] in ("missing_field", "invalid_field"), (path, answer)
    # and every operation says what its errors look like
    for path, item in served_doc["paths"].items():
        for operation in item.values():
            assert {"400", "401", "429", "503"} <= set(operation["responses"]), path


def test_readme_api_section_lists_exactly_the_documented_routes():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Server API", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `(GET|POST) /api/v1(/[a-z.]+)`", section, re.M))
    documented = {(method.upper(), path) for path, item in document()["paths"].items() for method in item}
    assert listed == documented
    for row in re.findall(r"^\| `api\.[a-z_]+`", section, re.M):
        key = row.split("`")[1].split(".")[1]
        assert key in ("keys", "requests_per_second", "burst", "max_body_bytes", "max_batch_commands"), row
