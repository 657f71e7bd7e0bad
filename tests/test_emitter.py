"""The Python emitter (issue 14): realtime_channels.emitter publishing from outside the server.

Real parts: redis-server, the package built as a wheel into a fresh venv, server nodes, the
official socket.io-client, a Celery worker with a Redis broker.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import distribution
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from harness import ROOT, free_port
from realtime_channels.addressing import RESERVED_EVENTS
from realtime_channels.channel_log import ChannelLogError, StreamPosition
from realtime_channels.emitter import AsyncEmitter, Emitter, HttpEmitter, PublishError
from realtime_channels.envelope import Envelope, channel_tag, decode_envelope, offset_token
from realtime_channels.http_emitter import APPLICATION_ROOM_PREFIX
from realtime_channels.redis_channel_log import RedisChannelLog

CHANNELS = ROOT / "channels"


async def history(url: str, channel: str, prefix: str = "rt", since: StreamPosition | None = None):
    client = aioredis.Redis.from_url(url)
    try:
        return await RedisChannelLog(client, prefix=prefix).history(channel, since=since, limit=100)
    finally:
        await client.aclose()


# ---------------------------------------------------------------------- (a) into a real Redis


async def test_sync_and_async_emitters_publish_through_the_servers_script(redis_url):
    sync, asyn = Emitter(redis_url), AsyncEmitter(redis_url)
    try:
        first = sync.emit("announce", {"text": "one"}, room="room:r", namespace="/chat")
        second = await asyn.emit("announce", ("two", 2), to="room:r", namespace="/chat", skip_sid="sid-1")
        third = sync.emit("announce", None, room="room:r", namespace="/chat", skip_sid=["sid-1", "sid-2"])
    finally:
        sync.close()
        await asyn.close()
    # One channel, one sequence of offsets, whichever flavour wrote.
    assert [first["offset"], second["offset"], third["offset"]] == [1, 2, 3]
    assert first["epoch"] == second["epoch"] == third["epoch"] and first["epoch"]
    assert not any(a["duplicate"] for a in (first, second, third))
    found = await history(redis_url, "/chat|room:r")
    assert found.recoverable and found.position == StreamPosition(3, first["epoch"])
    assert [p.offset for p in found.publications] == [1, 2, 3]
    assert [decode_envelope(p.data) for p in found.publications] == [
        Envelope("announce", [{"text": "one"}]),       # one argument
        Envelope("announce", ["two", 2], ("sid-1",)),  # a tuple is several arguments
        Envelope("announce", [], ("sid-1", "sid-2")),  # None is none
    ]


async def test_an_idempotency_key_returns_the_first_result_and_publishes_nothing(redis_url):
    sync, asyn = Emitter(redis_url), AsyncEmitter(redis_url)
    try:
        first = sync.emit("paid", {"order": 7}, room="user:alice", namespace="/chat", idempotency_key="order-7")
        again = [sync.emit("paid", {"order": 7}, room="user:alice", namespace="/chat", idempotency_key="order-7")
                 for _ in range(3)]
        again.append(await asyn.emit("paid", {"order": 7}, room="user:alice", namespace="/chat",
                                     idempotency_key="order-7"))
        other = sync.emit("paid", {"order": 8}, room="user:alice", namespace="/chat", idempotency_key="order-8")
    finally:
        sync.close()
        await asyn.close()
    assert first["duplicate"] is False
    assert all(a == {**first, "duplicate": True} for a in again), again
    assert other["offset"] == 2 and other["duplicate"] is False
    found = await history(redis_url, "/chat|user:alice")
    assert [decode_envelope(p.data).args for p in found.publications] == [[{"order": 7}], [{"order": 8}]]


async def test_several_rooms_each_get_a_publication_naming_the_others(redis_url):
    with Emitter(redis_url) as emitter:
        answers = emitter.emit("ping", "x", to=["room:a", "room:b", "room:a"], namespace="/chat")
        single = emitter.emit("ping", "y", to=["room:b"], namespace="/chat")
        everyone = emitter.emit("ping", "z", namespace="/collab")
        nobody = emitter.emit("ping", "w", to=[], namespace="/chat")
    assert [a["offset"] for a in answers] == [1, 1]  # one publication per room, repeats dropped
    assert isinstance(single, list) and single[0]["offset"] == 2  # a list in, a list out
    assert nobody == []
    assert isinstance(everyone, dict) and everyone["offset"] == 1
    for room in ("room:a", "room:b"):
        [publication, *_] = (await history(redis_url, f"/chat|{room}")).publications
        assert decode_envelope(publication.data) == Envelope("ping", ["x"], (), ("room:a", "room:b"))
    [whole] = (await history(redis_url, "/collab")).publications  # no room: the namespace's channel
    assert decode_envelope(whole.data) == Envelope("ping", ["z"])


async def test_the_prefix_and_bounds_are_the_servers(redis_url):
    from realtime_channels.channel_log import ChannelBounds

    with Emitter(redis_url, prefix="app1", bounds=ChannelBounds(max_length=2)) as emitter:
        for i in range(5):
            emitter.emit("tick", i, room="room:r", namespace="/chat")
    keys = sorted(k.decode() for k in redis.Redis.from_url(redis_url).keys("*"))
    assert keys == ["app1:{/chat|room:r}:meta", "app1:{/chat|room:r}:stream"]
    found = await history(redis_url, "/chat|room:r", prefix="app1")
    assert [p.offset for p in found.publications] == [4, 5]  # trimmed to max_length by the script
    assert (await history(redis_url, "/chat|room:r")).publications == []  # nothing under "rt"


async def test_a_node_subscribed_to_the_channel_is_notified_of_a_sync_publish(redis_url):
    """What a server node listens to (RedisChannelLog.subscribe) hears the emitter's publish."""
    heard: asyncio.Queue = asyncio.Queue()
    client = aioredis.Redis.from_url(redis_url)
    log = RedisChannelLog(client, on_publication=lambda channel, p: heard.put_nowait((channel, p)))
    try:
        await log.subscribe(["/chat|room:r"])
        answer = await asyncio.to_thread(lambda: Emitter(redis_url).emit("hi", "there", room="room:r",
                                                                         namespace="/chat"))
        channel, publication = await asyncio.wait_for(heard.get(), 5)
    finally:
        await log.close()
        await client.aclose()
    assert channel == "/chat|room:r"
    assert (publication.offset, publication.epoch) == (answer["offset"], answer["epoch"])
    assert decode_envelope(publication.data) == Envelope("hi", ["there"])


def test_bad_emits_are_refused_before_anything_is_sent(redis_url):
    with Emitter(redis_url) as emitter:
        cases = [
            (dict(event="connect"), "reserved"),
            (dict(event=""), "event"),
            (dict(event="e", namespace="chat"), "namespace"),
            (dict(event="e", namespace="/a|b"), "namespace"),
            (dict(event="e", to="room:a", room="room:b"), "not both"),
            (dict(event="e", to=3), "room name"),
            (dict(event="e", to=["room:a", ""]), "room name"),
            (dict(event="e", to="room:{x}"), "braces"),
            (dict(event="e", skip_sid=5), "skip_sid"),
            (dict(event="e", to="room:a", idempotency_key="x" * 200), "idempotency_key"),
            (dict(event="e", data="x" * (2 << 20), to="room:a"), "max_data_size"),
        ]
        for kwargs, message in cases:
            with pytest.raises(ValueError, match=message):
                emitter.emit(namespace=kwargs.pop("namespace", "/chat"), **kwargs)
        with pytest.raises(RuntimeError, match="callbacks"):
            emitter.emit("e", to="room:a", namespace="/chat", callback=print)
        with pytest.raises(TypeError):
            emitter.emit("e", None, "/chat")  # python-socketio's positional namespace: refused, not misread
    assert redis.Redis.from_url(redis_url).keys("*") == []
    with pytest.raises(ValueError, match="decode_responses"):
        Emitter(client=redis.Redis.from_url(redis_url, decode_responses=True))
    with pytest.raises(ValueError, match="prefix"):
        Emitter(redis_url, prefix="a b")


def test_a_tampered_channel_is_not_trusted(redis_url):
    redis.Redis.from_url(redis_url).hset("rt:{/chat|room:r}:meta", mapping={"e": "bad epoch!", "o": "x"})
    with Emitter(redis_url) as emitter, pytest.raises(ChannelLogError, match="corrupt"):
        emitter.emit("e", to="room:r", namespace="/chat")


def test_the_emitters_names_match_the_servers():
    """The HTTP emitter's room mapping and the reserved names are the server's (one meaning)."""
    from server.publisher import ROOM_PREFIX
    from server.realtime import RESERVED_EVENTS as SERVER_RESERVED

    assert APPLICATION_ROOM_PREFIX == ROOM_PREFIX
    assert RESERVED_EVENTS == SERVER_RESERVED


# ---------------------------------------------------------------------- (b) its own distribution


async def test_the_package_builds_as_a_wheel_and_works_without_the_servers_dependencies(tmp_path: Path, redis_url):
    source = tmp_path / "src"
    # Built from a copy: an in-tree build would leave build/ and egg-info behind in channels/.
    shutil.copytree(CHANNELS, source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing from this checkout
    subprocess.run([*pip, "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, env=env, timeout=120)
    [wheel] = (tmp_path / "dist").glob("*.whl")
    assert wheel.name.startswith("realtime_channels-")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    modules = {n.split("/", 1)[1] for n in names if n.startswith("realtime_channels/")}
    assert modules == {p.name for p in (CHANNELS / "realtime_channels").glob("*.py")}
    assert all(n.startswith(("realtime_channels/", "realtime_channels-")) for n in names), names
    requires = sorted(line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:"))
    assert requires == ["msgpack>=1.0", "redis>=5.0"]

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, env=env, timeout=60)
    python = str(venv / "bin" / "python")
    subprocess.run([*pip, "--python", python, "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
                   check=True, env=env, timeout=120)
    # redis and msgpack as installed from the lock here (no network: linked, metadata included).
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, env=env, capture_output=True, text=True).stdout.strip())
    for name in ("redis", "msgpack"):
        dist = distribution(name)
        tops = {Path(str(f)).parts[0] for f in dist.files or () if not str(f).startswith("..")}
        for top in tops:
            if not (site / top).exists() and not top.endswith(".pth"):
                (site / top).symlink_to(dist.locate_file(top))
    check = subprocess.run([*pip, "--python", python, "check"], env=env, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    probe = """
import importlib.util, json, sys
import realtime_channels.emitter as e
sent = e.Emitter(sys.argv[1]).emit("from_venv", {"n": 1}, room="room:r", namespace="/chat")
print(json.dumps({"file": e.__file__, "sent": sent,
                  "names": [n for n in ("Emitter", "AsyncEmitter", "HttpEmitter") if hasattr(e, n)],
                  "absent": [m for m in ("aiohttp", "socketio", "engineio", "server", "orjson")
                             if importlib.util.find_spec(m) is None]}))
"""
    out = subprocess.run([python, "-c", probe, redis_url], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert found["file"].startswith(str(site)), found
    assert found["names"] == ["Emitter", "AsyncEmitter", "HttpEmitter"]
    assert found["absent"] == ["aiohttp", "socketio", "engineio", "server", "orjson"]
    [publication] = (await history(redis_url, "/chat|room:r")).publications
    assert publication.position == StreamPosition(found["sent"]["offset"], found["sent"]["epoch"])
    assert decode_envelope(publication.data) == Envelope("from_venv", [{"n": 1}])


# ---------------------------------------------------------------------- (c) to a browser


# A plain synchronous process, as a Django view runs: publishes each text, prints the answers
# and which of the server's libraries it loaded (none).
DJANGO_LIKE = """
import json, sys
from realtime_channels.emitter import Emitter
emitter = Emitter(sys.argv[1])
answers = [emitter.emit("announce", {"text": t}, room="room:r", namespace="/chat") for t in sys.argv[2:]]
print(json.dumps({"answers": answers, "loaded": sorted(m for m in ("aiohttp", "socketio", "engineio", "server")
                                                            if m in sys.modules)}))
"""


async def publish_from_a_process(redis_url: str, *texts: str) -> list[dict]:
    out = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", DJANGO_LIKE, redis_url, *texts],
                                  capture_output=True, text=True, timeout=60, cwd=ROOT / "tests")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["loaded"] == []
    return result["answers"]


def announced(events: list[dict]) -> list[tuple[str, str]]:
    return [(e["args"][0]["text"], e["args"][-1]) for e in events]


async def test_a_separate_process_reaches_a_js_client_on_another_node_which_recovers_after_a_cut(
        servers, js, proxies, redis_url):
    env = {"REDIS_URL": redis_url, "PING_INTERVAL": "1", "PING_TIMEOUT": "1"}
    node1, node2 = servers(env=env), servers(env=env)
    proxy = await proxies([node2.port])
    first = await js.connect("sub", proxy.url + "/chat", transports=["websocket"])
    assert (await js.emit("sub", "join", {"room": "r"}))["ok"]
    tag = channel_tag("/chat|room:r")

    sent = await publish_from_a_process(redis_url, "one", "two")
    events = await js.wait("sub", "announce", 2)
    assert announced(events) == [("one", offset_token(tag, sent[0]["offset"])),
                                 ("two", offset_token(tag, sent[1]["offset"]))]

    proxy.down()
    await js.call("waitDisconnects", name="sub", count=1)
    missed = await publish_from_a_process(redis_url, "three", "four", "five")
    proxy.up([node1.port])  # back through the balancer, to the other node
    state = await js.call("waitConnects", name="sub", count=2)
    assert state["recovered"] is True and state["sid"] == first["sid"], (
        state, node1.output()[-2000:], node2.output()[-2000:])
    after = await publish_from_a_process(redis_url, "six")
    await js.wait("sub", "announce", 6)
    await asyncio.sleep(0.3)  # a duplicate would arrive now
    got = announced(await js.events("sub", "announce"))
    answers = [*sent, *missed, *after]
    assert got == [(t, offset_token(tag, a["offset"])) for t, a in
                   zip(["one", "two", "three", "four", "five", "six"], answers)]
    # one offset each, increasing (the room's presence events — the cut user's "away" and its
    # return — take offsets in between)
    offsets = [a["offset"] for a in answers]
    assert offsets == sorted(offsets) and len(set(offsets)) == 6


KEY = "emitter-test-key-0123456789abcdef"


async def test_the_http_emitter_reaches_a_room_a_socket_and_a_user(servers, js):
    srv = servers(env={"API_KEYS": f"backend:{KEY}"})
    joined = await js.connect("sub", srv.url + "/chat", transports=["websocket"])
    assert (await js.emit("sub", "join", {"room": "r"}))["ok"]
    me = await js.emit("sub", "whoami")
    emitter = HttpEmitter(srv.url, KEY)

    def emit(*args, **kwargs):
        return asyncio.to_thread(emitter.emit, *args, **kwargs)

    to_room = await emit("note", {"text": "room"}, room="room:r", namespace="/chat", idempotency_key="k1")
    again = await emit("note", {"text": "room"}, room="room:r", namespace="/chat", idempotency_key="k1")
    await emit("note", {"text": "socket"}, to=joined["sid"], namespace="/chat")
    await emit("note", ({"text": "user"}, "second arg"), to="user:" + me["user"], namespace="/chat")
    assert again == {**to_room, "duplicate": True}
    events = await js.wait("sub", "note", 3)
    await asyncio.sleep(0.3)
    events = await js.events("sub", "note")
    assert [e["args"][0]["text"] for e in events] == ["room", "socket", "user"]
    assert events[2]["args"][1] == "second arg"

    with pytest.raises(PublishError) as refused:
        await asyncio.to_thread(HttpEmitter(srv.url, KEY[::-1]).emit, "note", 1, to="room:r", namespace="/chat")
    assert refused.value.status == 401
    with pytest.raises(PublishError) as unknown:
        await emit("note", 1, to="room:r", namespace="/nope")
    assert (unknown.value.status, unknown.value.code, unknown.value.field) == (400, "unknown_namespace", "namespace")
    for kwargs in (dict(namespace="/chat"), dict(to=["room:r", "room:s"], namespace="/chat"),
                   dict(to="room:r", namespace="/chat", skip_sid=joined["sid"])):
        with pytest.raises(ValueError):
            emitter.emit("note", 1, **kwargs)
    with pytest.raises(PublishError) as down:
        HttpEmitter(f"http://127.0.0.1:{free_port()}", KEY, timeout=2).emit("note", 1, to="room:r", namespace="/chat")
    assert down.value.status == 0


# ---------------------------------------------------------------------- (d) a Celery task


TASKS = """
import os
from celery import Celery
from realtime_channels.emitter import Emitter

app = Celery("emit_tasks", broker=os.environ["BROKER_URL"], backend=os.environ["BROKER_URL"])
# Made once at import, before the worker forks its pool: redis-py reconnects in the child.
emitter = Emitter(os.environ["REALTIME_REDIS_URL"])


@app.task
def notify(room, text, key):
    return emitter.emit("notice", {"text": text}, room=room, namespace="/chat", idempotency_key=key)
"""


@pytest.fixture
def celery_worker(tmp_path: Path, redis_url: str):
    """A real Celery worker (prefork pool, one child) on the test redis-server (db 1)."""
    broker = redis_url.rsplit("/", 1)[0] + "/1"
    (tmp_path / "emit_tasks.py").write_text(TASKS)
    env = {**os.environ, "BROKER_URL": broker, "REALTIME_REDIS_URL": redis_url,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    log = open(tmp_path / "worker.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "emit_tasks", "worker", "--concurrency=1",
                             "--loglevel=INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    yield broker, tmp_path / "worker.log"
    os.killpg(proc.pid, 9)
    proc.wait()
    log.close()


async def test_a_celery_task_reaches_a_js_client(servers, js, redis_url, celery_worker):
    from celery import Celery

    broker, worker_log = celery_worker
    srv = servers(env={"REDIS_URL": redis_url})
    await js.connect("sub", srv.url + "/chat", transports=["websocket"])
    assert (await js.emit("sub", "join", {"room": "r"}))["ok"]
    producer = Celery("producer", broker=broker, backend=broker)
    try:
        def run(text: str, key: str) -> dict:
            return producer.send_task("emit_tasks.notify", args=["room:r", text, key]).get(timeout=30)

        first = await asyncio.to_thread(run, "report ready", "report-1")
        retried = await asyncio.to_thread(run, "report ready", "report-1")  # a retried task
    except Exception:
        raise AssertionError(worker_log.read_text()[-3000:])
    finally:
        producer.close()
    assert retried == {**first, "duplicate": True}
    [event] = await js.wait("sub", "notice", 1)
    await asyncio.sleep(0.3)
    assert len(await js.events("sub", "notice")) == 1  # the retry published nothing
    assert event["args"] == [{"text": "report ready"}, offset_token(channel_tag("/chat|room:r"), first["offset"])]
