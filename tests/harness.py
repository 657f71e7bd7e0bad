"""Real parts for the tests: redis-server, server processes, the official JS client, a TCP proxy."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DRIVER = ROOT / "tests" / "js" / "driver.mjs"


def _worker() -> tuple[int, int]:
    """This process's pytest-xdist worker (index, count) from the variables xdist sets in
    each worker (PYTEST_XDIST_WORKER=gw<index>); (0, 1) when the suite runs in one process."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(name[2:]) if name.startswith("gw") and name[2:].isdigit() else 0
    return index, max(count, 1)


def free_port() -> int:
    """A free loopback port the kernel picked, from this worker's share of the ports: with
    several xdist workers, each takes only ports whose pair number (port // 2) modulo the
    worker count is its own index, so that two workers never hand out the same port between
    picking it and a server binding it (the kernel hands even ports to bind(0) first, hence
    pairs rather than single ports)."""
    index, count = _worker()
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if (port // 2) % count == index:
            return port


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port} after {timeout}s")


def b(data: bytes) -> dict[str, str]:
    """Binary for the JS driver."""
    return {"$bin": base64.b64encode(data).decode()}


def unb(value: Any) -> bytes:
    return base64.b64decode(value["$bin"])


# ---------------------------------------------------------------------- redis


class RedisServer:
    """A real redis-server on a free loopback port, with no persistence unless asked."""

    def __init__(self, port: int | None = None, appendonly: bool = False) -> None:
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="redis-test-")
        self.appendonly = appendonly
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir, "--save", "",
                "--appendonly", "yes" if self.appendonly else "no", "--protected-mode", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def cli(self, *args: str) -> str:
        out = subprocess.run([shutil.which("redis-cli") or "redis-cli", "-p", str(self.port), *args],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------------- server processes


class ServerProcess:
    """``python -m server`` as its own process, on a free port, with a given environment."""

    def __init__(self, env: dict[str, str] | None = None, port: int | None = None,
                 args: list[str] | None = None) -> None:
        self.port = port or free_port()
        self.env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(self.port), "LOG_LEVEL": "info",
                    "CORS_ORIGINS": f"http://127.0.0.1:{self.port},http://localhost:{self.port}",
                    "NODE_ID": f"node-{self.port}", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.args = args or []
        self.log = tempfile.NamedTemporaryFile(prefix=f"server-{self.port}-", suffix=".log", delete=False)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> "ServerProcess":
        self.proc = subprocess.Popen([sys.executable, "-m", "server", *self.args], cwd=ROOT, env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=0.5) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"server not healthy after {timeout}s:\n{self.output()}")

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def terminate(self, timeout: float = 15.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        try:
            self.terminate(10)
        except subprocess.TimeoutExpired:
            self.kill()


# ---------------------------------------------------------------------- the JS client


class JSDriverError(AssertionError):
    pass


class JSClient:
    """A Node process running tests/js/driver.mjs with the official socket.io-client."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None

    async def start(self) -> "JSClient":
        self.proc = await asyncio.create_subprocess_exec(
            "node", str(DRIVER), cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=64 * 1024 * 1024)
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                break
            reply = json.loads(line)
            future = self._waiting.pop(reply.get("id"), None)
            if future is not None and not future.done():
                future.set_result(reply)
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(JSDriverError("driver exited"))

    async def call(self, cmd: str, py_timeout: float = 30.0, **kwargs: Any) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        mid = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._waiting[mid] = future
        self.proc.stdin.write((json.dumps({"id": mid, "cmd": cmd, **kwargs}) + "\n").encode())
        await self.proc.stdin.drain()
        reply = await asyncio.wait_for(future, py_timeout)
        if not reply.get("ok"):
            raise JSDriverError(f"{cmd} failed: {reply.get('error')}")
        return reply

    async def connect(self, name: str, url: str, **opts: Any) -> dict[str, Any]:
        expect_error = opts.pop("expect_error", False)
        return await self.call("connect", name=name, url=url, opts=opts, expectError=expect_error)

    async def emit(self, name: str, event: str, *args: Any, timeout: int = 5000) -> Any:
        reply = await self.call("emit", name=name, event=event, args=list(args), ack=True, timeout=timeout)
        return reply["result"]

    async def send(self, name: str, event: str, *args: Any) -> None:
        await self.call("emit", name=name, event=event, args=list(args), ack=False)

    async def events(self, name: str, event: str | None = None) -> list[dict[str, Any]]:
        return (await self.call("events", name=name, event=event))["events"]

    async def wait(self, name: str, event: str, count: int = 1, timeout: int = 8000) -> list[dict[str, Any]]:
        return (await self.call("wait", name=name, event=event, count=count, timeout=timeout,
                                py_timeout=timeout / 1000 + 5))["events"]

    async def state(self, name: str) -> dict[str, Any]:
        return await self.call("state", name=name)

    async def close(self) -> None:
        if self.proc is not None:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()


# ---------------------------------------------------------------------- a TCP proxy


class TcpProxy:
    """Forwards a local port to a server; can cut every open connection (as a network fault
    would, no close handshake at the Socket.IO level) and can refuse WebSocket upgrades
    (as restrictive corporate proxies do). With several upstreams it balances round-robin
    per TCP connection, with no affinity."""

    def __init__(self, upstream_ports: list[int], refuse_websocket: bool = False) -> None:
        self.upstreams = upstream_ports
        self.refuse_websocket = refuse_websocket
        self.port = free_port()
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._next = itertools.cycle(range(len(upstream_ports)))
        self.websocket_refusals = 0
        self.blocked = False  # while True, new connections are dropped at once (link down)
        self._downstream_open = asyncio.Event()
        self._downstream_open.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> "TcpProxy":
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.blocked:
            self._abort(writer)
            return
        first = await reader.read(65536)
        if self.refuse_websocket and b"upgrade: websocket" in first.lower():
            self.websocket_refusals += 1
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        port = self.upstreams[next(self._next)]
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.close()
            return
        self._conns.update((writer, up_writer))
        up_writer.write(first)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, downstream: bool) -> None:
            try:
                while data := await src.read(65536):
                    if self.refuse_websocket and b"upgrade: websocket" in data.lower():
                        break
                    if downstream:
                        await self._downstream_open.wait()
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                self._abort(dst)

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))
        self._conns.discard(writer)
        self._conns.discard(up_writer)

    @staticmethod
    def _abort(writer: asyncio.StreamWriter) -> None:
        transport = writer.transport
        if transport is not None and not transport.is_closing():
            transport.abort()

    def down(self) -> int:
        """The link goes down: open connections are cut and new ones fail until :meth:`up`."""
        self.blocked = True
        return self.cut()

    def up(self, upstream_ports: list[int] | None = None) -> None:
        """The link comes back, optionally towards other servers."""
        if upstream_ports is not None:
            self.upstreams = upstream_ports
            self._next = itertools.cycle(range(len(upstream_ports)))
        self.blocked = False

    def freeze(self) -> None:
        """Hold back everything the servers send (acks included) until :meth:`thaw`."""
        self._downstream_open.clear()

    def thaw(self) -> None:
        self._downstream_open.set()

    def cut(self) -> int:
        """Abort every open connection (RST, like a dropped network link)."""
        conns = list(self._conns)
        for w in conns:
            self._abort(w)
        self._conns.clear()
        return len(conns)

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


# ---------------------------------------------------------------------- nginx


NGINX_CONF = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 2048; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    # Plain round-robin per request: no ip_hash, no sticky cookie, no upstream keepalive.
    upstream nodes {{
{servers}
    }}
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://nodes;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_read_timeout 120s;
            proxy_buffering off;
        }}
    }}
}}
"""


class Nginx:
    """A real nginx balancing round-robin over server processes, with no affinity."""

    def __init__(self, upstream_ports: list[int]) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="nginx-test-")
        os.chmod(self.dir, 0o777)
        servers = "\n".join(f"        server 127.0.0.1:{p};" for p in upstream_ports)
        Path(self.dir, "nginx.conf").write_text(NGINX_CONF.format(dir=self.dir, servers=servers, port=self.port))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Nginx":
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = subprocess.Popen([binary, "-p", self.dir, "-c", f"{self.dir}/nginx.conf", "-g", "daemon off;"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


async def calls_of(observer, command: str) -> int:
    """How many times Redis ran ``command`` since its stats were reset, read from Redis itself
    (INFO commandstats; commands a script runs count too). ``observer``: a redis.asyncio client."""
    stats = await observer.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def kill_and_publish(client: Any, prefix: str, bounds: Any, publications: list[tuple[str, bytes]]) -> None:
    """Kill every pub/sub connection of the Redis ``client`` talks to and publish
    ``publications`` (``(channel, data)``, in order, through the channel log's publish script,
    keys under ``prefix``) in one transaction: their notifications are certainly missed by
    every subscriber."""
    from realtime_channels.redis_channel_log import PUBLISH_SCRIPT, publish_call

    async with client.pipeline(transaction=True) as pipe:
        pipe.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        for channel, data in publications:
            keys, args = publish_call(prefix, channel, data, bounds)
            pipe.eval(PUBLISH_SCRIPT, len(keys), *keys, *args)
        await pipe.execute()


@contextlib.asynccontextmanager
async def monitored(url: str):
    """The commands Redis at ``url`` executes inside the block, as MONITOR reports them (dicts
    with ``command``), in a list filled as they come; the block's last ones are waited for."""
    import redis.asyncio as aioredis

    watcher = aioredis.Redis.from_url(url)
    seen: list[dict] = []
    try:
        async with watcher.monitor() as monitor:
            async def read() -> None:
                async for item in monitor.listen():
                    seen.append(item)
            reader = asyncio.create_task(read())
            await asyncio.sleep(0.05)
            try:
                yield seen
                await asyncio.sleep(0.2)
            finally:
                reader.cancel()
    finally:
        await watcher.aclose()
