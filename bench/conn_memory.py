"""What one idle WebSocket connection costs the server: RSS, Python heap by file, GC objects.

    .venv/bin/python bench/conn_memory.py [--conns 2000] [--namespace /bench] [--loop uvloop|asyncio]
                                          [--tracemalloc] [--top 15] [--types]

Runs the server in this process (the bench profile, ``bench/bench.toml``, embedded: no Redis,
the collector tuned as ``python -m server`` tunes it) and a client in a child process (so its
memory is not counted) that opens ``--conns`` Socket.IO connections over WebSocket, each
connected to ``--namespace``, at most 100 in flight, and keeps them idle ``--hold`` seconds. After a warm-up
(10 connections opened, used and closed, so lazily loaded code is in the baseline) it
prints, per connection: the RSS delta (KiB), the number of objects the collector tracks (with
``--types``, by type), and
with ``--tracemalloc`` (plain asyncio then, to see inside the event loop; slower, and RSS is
inflated by tracemalloc's own bookkeeping) the Python heap delta by file, top ``--top``, and
by package. Memory is not disturbed by other processes' CPU load, so one run is enough.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from inprocess import start_bench_server  # noqa: E402


def rss_kib() -> int:
    """This process's resident set size, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def settle() -> None:
    """Collect everything collectable, so only what the connections hold stays."""
    for _ in range(3):
        gc.collect()


# ------------------------------------------------------------------ client (child process)

async def _connect(session, url: str, namespace: str, deflate: bool = False):
    ws = await session.ws_connect(url, autoping=False, max_msg_size=0, compress=15 if deflate else 0)
    msg = await ws.receive()  # the Engine.IO OPEN
    assert msg.data.startswith("0"), msg.data
    prefix = "" if namespace == "/" else namespace + ","
    await ws.send_str("40" + prefix)
    while True:  # the namespace CONNECT ack
        msg = await ws.receive()
        if msg.data.startswith("40"):
            return ws
        if msg.data.startswith("44"):
            raise RuntimeError(msg.data)


async def _keep_alive(ws) -> None:
    """Answer the server's heartbeat PINGs, like any client."""
    async for msg in ws:
        if msg.data == "2":
            await ws.send_str("3")


async def client(port: int, conns: int, namespace: str, deflate: bool) -> None:
    import aiohttp

    url = f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:
        warm = [await _connect(session, url, namespace, deflate) for _ in range(10)]
        for ws in warm:
            await ws.close()
        await asyncio.sleep(1.0)
        print("warm", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        sem = asyncio.Semaphore(100)
        t0 = time.perf_counter()

        keepers = []

        async def one():
            async with sem:
                ws = await _connect(session, url, namespace, deflate)
            keepers.append(asyncio.ensure_future(_keep_alive(ws)))  # from now on, as a slow run lasts
            return ws

        clients = await asyncio.gather(*(one() for _ in range(conns)))
        print(json.dumps({"opened": len(clients), "wall_s": round(time.perf_counter() - t0, 2)}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        for k in keepers:
            k.cancel()
        for ws in clients:
            await ws.close()


# ------------------------------------------------------------------ server (this process)

def tracked_types() -> dict[str, int]:
    """The objects the collector tracks, by type (``module.qualname``)."""
    counts: dict[str, int] = defaultdict(int)
    for o in gc.get_objects():
        counts[f"{type(o).__module__}.{type(o).__qualname__}"] += 1
    return counts


def package_of(filename: str) -> str:
    for name in ("aiohttp", "asyncio", "engineio", "socketio", "uvloop", "multidict", "yarl"):
        if f"/{name}/" in filename:
            return name
    if "/site-packages/" in filename:
        return filename.split("/site-packages/", 1)[1].split("/", 1)[0]
    if filename.startswith(str(ROOT)):
        return "ours: " + filename[len(str(ROOT)) + 1:].split("/", 1)[0]
    return "other"


async def measure(args: argparse.Namespace) -> dict:
    runner, app, port = await start_bench_server()

    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--client", str(port), "--conns", str(args.conns), "--namespace", args.namespace,
        *(["--deflate"] if args.deflate else []), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert (await child.stdout.readline()).strip() == b"warm"
    await asyncio.sleep(0.5)
    settle()
    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start(max(1, args.frames))
        before_snap = tracemalloc.take_snapshot()
    rss0, objs0 = rss_kib(), len(gc.get_objects())
    types0 = tracked_types() if args.types else None
    child.stdin.write(b"go\n")
    opened = json.loads(await child.stdout.readline())
    await asyncio.sleep(args.hold)
    if not args.no_collect:
        settle()
    rss1, objs1 = rss_kib(), len(gc.get_objects())
    n = len(app["runtime"].sio.eio.sockets)  # the sessions alive (divides every figure)
    result = {"conns": n, "opened": opened["opened"], "loop": args.loop, "namespace": args.namespace, "connect_wall_s": opened["wall_s"],
              "kib_per_conn_rss": round((rss1 - rss0) / n, 2), "gc_objects_per_conn": round((objs1 - objs0) / n, 1)}
    if types0 is not None:
        types1 = tracked_types()
        diff = {k: (types1.get(k, 0) - types0.get(k, 0)) / n for k in set(types0) | set(types1)}
        result["tracked_types_per_conn"] = {k: round(v, 2) for k, v in sorted(diff.items(), key=lambda kv: -kv[1])
                                            if v >= 0.05}
    if args.tracemalloc:
        after_snap = tracemalloc.take_snapshot()
        filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
        stats = after_snap.filter_traces(filters).compare_to(before_snap.filter_traces(filters), "filename")
        total = sum(s.size_diff for s in stats)
        result["kib_per_conn_heap"] = round(total / n / 1024, 2)
        by_package: dict[str, int] = defaultdict(int)
        for s in stats:
            by_package[package_of(s.traceback[0].filename)] += s.size_diff
        result["by_package_kib"] = {k: round(v / n / 1024, 2)
                                    for k, v in sorted(by_package.items(), key=lambda kv: -kv[1]) if abs(v) / n >= 10}
        top = sorted(stats, key=lambda s: -s.size_diff)[:args.top]
        result["top_files_kib"] = [[s.traceback[0].filename.replace(str(ROOT) + "/", ""),
                                    round(s.size_diff / n / 1024, 2), round(s.count_diff / n, 1)] for s in top]
        if args.frames > 1:  # where the biggest allocations come from, call chains
            for s in after_snap.filter_traces(filters).compare_to(before_snap.filter_traces(filters), "traceback")[:args.top]:
                print(f"--- {s.size_diff / n:8.0f} B/conn {s.count_diff / n:6.1f} blocks/conn")
                for frame in s.traceback.format(most_recent_first=True)[:2 * args.frames:2]:
                    print("   ", frame.strip().replace(str(ROOT) + "/", ""))
        tracemalloc.stop()
    child.stdin.write(b"done\n")
    await child.wait()
    await runner.cleanup()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conns", type=int, default=2000)
    parser.add_argument("--namespace", default="/bench", help="the namespace each connection joins")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default=None,
                        help="event loop (default: uvloop as in production, asyncio with --tracemalloc)")
    parser.add_argument("--deflate", action="store_true",
                        help="clients offer permessage-deflate, as browsers and the harness's client do")
    parser.add_argument("--hold", type=float, default=45.0,
                        help="seconds the connections stay idle before the measure: the default covers a "
                             "heartbeat ping (25 s) and the session heartbeat that saves every live "
                             "socket's session (max_disconnection_duration / 3 = 40 s)")
    parser.add_argument("--no-collect", action="store_true",
                        help="measure without a full collection first (as the harness's conns scenario: "
                             "cyclic garbage not collected yet counts)")
    parser.add_argument("--tracemalloc", action="store_true", help="also the Python heap by file and package")
    parser.add_argument("--types", action="store_true",
                        help="also the objects the collector tracks per connection, by type")
    parser.add_argument("--top", type=int, default=15, help="files listed with --tracemalloc")
    parser.add_argument("--frames", type=int, default=1,
                        help="with --tracemalloc: over 1, also the top call chains this deep")
    parser.add_argument("--client", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        asyncio.run(client(args.client, args.conns, args.namespace, args.deflate))
        return 0
    if args.loop is None:
        args.loop = "asyncio" if args.tracemalloc else "uvloop"
    if args.loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    result = asyncio.run(measure(args))
    if args.tracemalloc:
        print(f"{'file':70} KiB/conn  blocks/conn")
        for name, kib, count in result["top_files_kib"]:
            print(f"{name[-70:]:70} {kib:8.2f} {count:10.1f}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
