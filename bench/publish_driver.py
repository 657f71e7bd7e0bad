"""Publisher of the `publish` scenario (bench/publish.sh runs it on the load generator's core).

Starts bench/publish_clients.js (N WebSocket clients in one /chat room), then publishes ``pub``
events to that room through one flavour and prints one JSON line per measured phase:

- ``async``: :class:`realtime_channels.emitter.AsyncEmitter` (redis.asyncio), ``--window`` tasks;
- ``sync``: :class:`realtime_channels.emitter.Emitter` (redis-py), ``--window`` threads
  (``--window 1``: one call after another, as a Django view makes them);
- ``http``: :class:`realtime_channels.emitter.HttpEmitter` (urllib, a new connection per call),
  ``--window`` threads;
- ``api``: ``POST /api/v1/publish`` from an aiohttp session (keep-alive), ``--window`` tasks:
  what the HTTP API itself sustains when the client reuses connections.

Phases: ``warm`` (not reported), ``max`` (``--count`` publications as fast as ``--window``
outstanding calls allow: publishes/s), ``rate`` (``--rate`` per second for ``--seconds``: the
publish → delivery latency at a steady load). Every publication carries its publish time (µs,
wall clock, taken just before the emit call); the clients report the delivery latency to each of
them, the driver the call's own latency (until Redis or the API answered).

    python bench/publish_driver.py summarize FILE   # the table of a run's JSON lines
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FLAVOURS = ("async", "sync", "http", "api")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def quantiles(samples: list[float]) -> dict[str, float] | None:
    """n, p50, p90, p99 and max of ``samples`` (ms), rounded to µs."""
    if not samples:
        return None
    s = sorted(samples)
    q = lambda p: round(s[min(len(s) - 1, int(p * len(s)))], 3)  # noqa: E731 - as chat_loadgen.js
    return {"n": len(s), "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": round(s[-1], 3)}


def proc_ticks() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, CPU ticks user + system) of every process."""
    procs: dict[int, tuple[int, int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                text = Path(f"/proc/{d}/stat").read_text("latin1")
            except OSError:
                continue
            f = text[text.rfind(")") + 2:].split()
            procs[int(d)] = (int(f[1]), int(f[11]) + int(f[12]))
    return procs


def tree(procs: dict[int, tuple[int, int]], root: int) -> set[int]:
    """``root`` and its descendants."""
    members, grew = {root}, True
    while grew:
        grew = False
        for pid, (ppid, _) in procs.items():
            if pid not in members and ppid in members:
                members.add(pid)
                grew = True
    return members


def cpu_split(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], wall: float,
              server_pid: int, ignore: frozenset[int] = frozenset()) -> dict[str, float | None]:
    """CPU % over ``wall`` s of the server's tree (with its Redis), this process's tree (the
    publisher and the clients: the load generator) and every other process (interference)
    but those in ``ignore`` (bench/cluster.sh's idle-time spinners)."""
    server = tree(after, server_pid) if server_pid else set()
    mine = tree(after, os.getpid())
    used = {"server": 0, "client": 0, "other": 0}
    for pid, (ppid, ticks) in after.items():
        d = ticks - before.get(pid, (0, 0))[1]
        if d <= 0 or pid == 2 or ppid == 2 or pid in ignore:  # kernel threads, spinners
            continue
        used["server" if pid in server else "client" if pid in mine else "other"] += d
    pct = {k: round(v * 100 / CLK_TCK / wall, 1) for k, v in used.items()}
    return {"server_cpu_pct": pct["server"] if server_pid else None, "client_cpu_pct": pct["client"],
            "other_procs_cpu_pct": pct["other"]}


class Schedule:
    """Hands out publication numbers 0..count-1 to the workers; with ``rate``, number k is due
    at start + k/rate (a late worker publishes at once: the rate is an upper bound)."""

    def __init__(self, count: int, rate: float | None) -> None:
        self.count, self.rate = count, rate
        self.next = 0
        self.lock = threading.Lock()
        self.start = time.perf_counter()

    def take(self) -> tuple[int, float]:
        """(k, seconds to wait before publishing it); k is -1 when all are taken."""
        with self.lock:
            k = self.next
            if k >= self.count:
                return -1, 0.0
            self.next += 1
        wait = 0.0 if self.rate is None else self.start + k / self.rate - time.perf_counter()
        return k, max(0.0, wait)


def payload(phase: str, k: int) -> dict[str, Any]:
    """The event's argument: phase, number and publish time (µs since the epoch)."""
    return {"p": phase, "i": k, "t": time.time_ns() // 1000}


class Publisher:
    """One flavour's publish call, sync (threads) or async (tasks)."""

    def __init__(self, flavour: str, redis_url: str, api_url: str, api_key: str, room: str) -> None:
        self.flavour, self.redis_url, self.api_url, self.api_key, self.room = flavour, redis_url, api_url, api_key, room
        self.is_async = flavour in ("async", "api")

    async def open(self) -> None:
        from realtime_channels.emitter import AsyncEmitter, Emitter, HttpEmitter
        if self.flavour == "async":
            self.emitter: Any = AsyncEmitter(self.redis_url)
        elif self.flavour == "sync":
            self.emitter = Emitter(self.redis_url)
        elif self.flavour == "http":
            self.emitter = HttpEmitter(self.api_url, self.api_key)
        else:
            import aiohttp
            self.session = aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {self.api_key}"},
                connector=aiohttp.TCPConnector(limit=0))
            self.endpoint = self.api_url + "/api/v1/publish"

    def sync_call(self, arg: dict[str, Any]) -> None:
        self.emitter.emit("pub", arg, room="room:" + self.room, namespace="/chat")

    async def async_call(self, arg: dict[str, Any]) -> None:
        if self.flavour == "async":
            await self.emitter.emit("pub", arg, room="room:" + self.room, namespace="/chat")
            return
        body = {"namespace": "/chat", "room": self.room, "event": "pub", "args": [arg]}
        async with self.session.post(self.endpoint, json=body) as response:
            answer = await response.read()
            if response.status != 200:
                raise RuntimeError(f"{response.status} {answer[:200]!r}")

    async def close(self) -> None:
        if self.flavour == "async":
            await self.emitter.close()
        elif self.flavour == "sync":
            self.emitter.close()
        elif self.flavour == "api":
            await self.session.close()


async def run_phase(pub: Publisher, phase: str, count: int, window: int, rate: float | None) -> dict[str, Any]:
    """Publish ``count`` events with at most ``window`` calls outstanding; the call latencies,
    errors and wall time."""
    schedule = Schedule(count, rate)
    calls: list[float] = []
    errors: list[str] = []  # the first five
    failed = [0]

    def record(t0: float, exc: BaseException | None) -> None:
        calls.append((time.perf_counter() - t0) * 1000)
        if exc is not None:
            failed[0] += 1
            if len(errors) < 5:
                errors.append(repr(exc)[:200])

    def thread_worker() -> None:
        while True:
            k, wait = schedule.take()
            if k < 0:
                return
            if wait:
                time.sleep(wait)
            t0 = time.perf_counter()
            try:
                pub.sync_call(payload(phase, k))
                record(t0, None)
            except Exception as exc:  # counted and reported: the run goes on
                record(t0, exc)

    async def task_worker() -> None:
        while True:
            k, wait = schedule.take()
            if k < 0:
                return
            if wait:
                await asyncio.sleep(wait)
            t0 = time.perf_counter()
            try:
                await pub.async_call(payload(phase, k))
                record(t0, None)
            except Exception as exc:  # counted and reported: the run goes on
                record(t0, exc)

    start = time.perf_counter()
    if pub.is_async:
        await asyncio.gather(*(task_worker() for _ in range(window)))
    else:
        threads = [threading.Thread(target=thread_worker) for _ in range(window)]
        for t in threads:
            t.start()
        await asyncio.to_thread(lambda: [t.join() for t in threads])
    wall = time.perf_counter() - start
    ok = len(calls) - failed[0]
    return {"wall_s": round(wall, 3), "published": ok, "errors": failed[0], "error_samples": errors,
            "publishes_per_s": round(ok / wall, 1), "call_ms": quantiles(calls)}


class Clients:
    """bench/publish_clients.js as a child process (inherits this process's CPU pinning).

    :param rooms: spread the clients over this many rooms, ``<room>-0`` .. (publish_clients.js
        --rooms); 1: all in ``room``.
    """

    def __init__(self, port: int, clients: int, room: str, node: str, rooms: int = 1) -> None:
        self.proc = subprocess.Popen(
            [node, str(HERE / "publish_clients.js"), "--port", str(port), "--clients", str(clients), "--room", room,
             "--rooms", str(rooms)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def line(self) -> dict[str, Any]:
        text = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not text:
            raise RuntimeError("publish_clients.js exited")
        answer = json.loads(text)
        if "error" in answer:
            raise RuntimeError(f"publish_clients.js: {answer['error']}")
        return answer

    def report(self, phase: str, count: int) -> dict[str, Any]:
        self.proc.stdin.write(f"end {phase} {count}\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return self.line()

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")  # type: ignore[union-attr]
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


async def measure(args: argparse.Namespace) -> None:
    api_url = f"http://127.0.0.1:{args.port}"
    pub = Publisher(args.flavour, args.redis_url, api_url, args.api_key, args.room)
    await pub.open()
    clients = await asyncio.to_thread(Clients, args.port, args.clients, args.room, args.node)
    try:
        await asyncio.to_thread(clients.line)  # ready: every client joined
        await asyncio.sleep(0.5)
        phases: list[tuple[str, int, float | None]] = [
            ("warm", args.warm, None), ("max", args.count, None),
            ("rate", int(args.rate * args.seconds), args.rate)]
        for phase, count, rate in phases:
            before = proc_ticks()
            row = await run_phase(pub, phase, count, args.window, rate)
            cpu = cpu_split(before, proc_ticks(), row["wall_s"], args.server_pid)
            delivered = await asyncio.to_thread(clients.report, phase, row["published"])
            if phase == "warm":
                continue
            print(json.dumps({
                "scenario": "publish", "target": args.target, "flavour": args.flavour, "phase": phase,
                "clients": args.clients, "window": args.window, "rate": rate, **row,
                **cpu,
                "deliveries": delivered["deliveries"], "expected_deliveries": delivered["expected_deliveries"],
                "complete": delivered["complete"], "delivery_ms": delivered["lat_ms"],
                "out_of_order": delivered["out_of_order"], "unexpected_closes": delivered["unexpected_closes"],
                "rep": args.rep, "ts": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, separators=(",", ":")), flush=True)
            await asyncio.sleep(0.5)
    finally:
        await asyncio.to_thread(clients.close)
        await pub.close()


def rows_by(path: str, scenario: str, key: str) -> tuple[list[dict[str, Any]], dict[tuple[str, str], list[dict[str, Any]]]]:
    """The ``scenario`` rows of the JSON-lines file ``path``, and them grouped by (row[key], phase)."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if f'"scenario":"{scenario}"' in line]
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault((r[key], r["phase"]), []).append(r)
    return rows, by


def med(cell: list[dict[str, Any]], *path: str) -> Any:
    """The median of the rows' value at ``path`` (keys into nested objects), to 0.1; "–" if none."""
    values = []
    for r in cell:
        for key in path:
            r = r.get(key) if isinstance(r, dict) else None
        if r is not None:
            values.append(r)
    return round(statistics.median(values), 1) if values else "–"


def summarize(path: str) -> None:
    """A markdown table of the `publish` rows of ``path``: medians over repetitions; ⚠ marks a
    cell with errors or missing deliveries."""
    rows, by = rows_by(path, "publish", "flavour")

    print("| flavour | publishes/s (window) | call p50 / p99 ms | delivery p50 / p99 ms at max | "
          "delivery p50 / p99 ms at the fixed rate | CPU % at max: server+Redis / publisher+clients | "
          "other processes' CPU % at max / at the rate |")
    print("|---|---|---|---|---|---|---|")
    for f in FLAVOURS:
        m, r = by.get((f, "max")), by.get((f, "rate"))
        if not m:
            continue
        bad = any(x["errors"] or not x["complete"] for x in m + (r or []))
        rate = (f"{med(r, 'delivery_ms', 'p50')} / {med(r, 'delivery_ms', 'p99')} ({med(r, 'publishes_per_s'):.0f}/s)"
                if r else "–")
        print(f"| {f}{' ⚠' if bad else ''} | {med(m, 'publishes_per_s'):.0f} ({m[0]['window']}) | "
              f"{med(m, 'call_ms', 'p50')} / {med(m, 'call_ms', 'p99')} | "
              f"{med(m, 'delivery_ms', 'p50')} / {med(m, 'delivery_ms', 'p99')} | {rate} | "
              f"{med(m, 'server_cpu_pct')} / {med(m, 'client_cpu_pct')} | "
              f"{med(m, 'other_procs_cpu_pct')} / {med(r, 'other_procs_cpu_pct') if r else '–'} |")
    if len({r["rep"] for r in rows}) > 1:
        print(f"(medians of {len({r['rep'] for r in rows})} repetitions)")


def main(argv: list[str]) -> None:
    if argv[:1] == ["summarize"]:
        summarize(argv[1])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flavour", choices=FLAVOURS, required=True)
    p.add_argument("--port", type=int, required=True, help="the server's port (WebSocket clients and API)")
    p.add_argument("--redis-url", required=True, help="the server's Redis, for the async and sync emitters")
    p.add_argument("--api-key", required=True, help="a key of the server's API_KEYS, for http and api")
    p.add_argument("--clients", type=int, default=10, help="WebSocket clients in the room")
    p.add_argument("--count", type=int, default=5000, help="publications in the max phase")
    p.add_argument("--warm", type=int, default=200, help="publications before measuring")
    p.add_argument("--window", type=int, default=8, help="calls outstanding at most (tasks or threads)")
    p.add_argument("--rate", type=float, default=200.0, help="publications per second in the rate phase")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the rate phase")
    p.add_argument("--room", default="pub", help="the /chat room")
    p.add_argument("--server-pid", type=int, default=0, help="to measure the server's (and its Redis's) CPU")
    p.add_argument("--target", default="realtime-server+redis")
    p.add_argument("--rep", type=int, default=1)
    p.add_argument("--node", default="node")
    asyncio.run(measure(p.parse_args(argv)))


if __name__ == "__main__":
    main(sys.argv[1:])
