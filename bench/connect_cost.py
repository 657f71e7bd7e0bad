"""What one Socket.IO connect costs the server in work: Python calls per connect, by function.

    .venv/bin/python bench/connect_cost.py [--conns 500] [--namespace /bench] [--top 30]
                                           [--gc] [--filter realtime]

Runs the server in this process (the bench profile, ``bench/bench.toml``, embedded: no Redis,
the collector tuned as ``python -m server`` tunes it, plain asyncio so the event loop's own
calls count too) and the client of ``bench/conn_memory.py`` in a child process. After a
warm-up, two storms under cProfile: ``--conns`` connections, closed again, then twice as many.
Each storm opens WebSocket sessions (``/socket.io/?EIO=4&transport=websocket``) and CONNECTs
each to ``--namespace``, at most 100 in flight, as the harness's conns scenario does. The
difference of the two profiles divided by ``--conns`` is the work of one connect, without
what a storm costs once (start-up, warm-up): Python calls per connect outside the event loop
(the event loop's and built-ins' calls vary with the machine's load; they are in the second
figure, all calls), then the functions with the most calls per connect. Call counts do not depend on the machine's load, so one run is
enough to compare two trees; ``--gc`` also counts the collector's runs per 1,000 connects
(gc.callbacks), for the same two storms. ``--gc-storms K`` instead runs K storms of
``--conns`` (10,000, say), unprofiled, and says what the collector did in each (runs and
milliseconds by generation) and the RSS after each, closed again.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from inprocess import start_bench_server  # noqa: E402

from conn_memory import _connect, _keep_alive  # noqa: E402  (the same client)


async def client(port: int, namespace: str) -> None:
    """Storms on command: reads a count from stdin, opens that many, says so, closes them on
    the next line; an empty line ends."""
    import aiohttp

    url = f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        for ws in [await _connect(session, url, namespace) for _ in range(20)]:
            await ws.close()
        print("warm", flush=True)
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
            if not line:
                return
            sem = asyncio.Semaphore(100)

            async def one():
                async with sem:
                    return await _connect(session, url, namespace)

            clients = await asyncio.gather(*(one() for _ in range(int(line))))
            keepers = [asyncio.ensure_future(_keep_alive(ws)) for ws in clients]
            print(len(clients), flush=True)
            await loop.run_in_executor(None, sys.stdin.readline)
            for k in keepers:
                k.cancel()
            for ws in clients:
                await ws.close()
            print("closed", flush=True)


class GcCount:
    """Collections, their time and what they freed, by generation, while installed (gc.callbacks)."""

    def __init__(self) -> None:
        self.runs = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.collected = 0
        self._started = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.process_time()  # CPU time: not inflated by the machine's load
        else:
            generation = info["generation"]
            self.runs[generation] += 1
            self.seconds[generation] += time.process_time() - self._started
            self.collected += info["collected"]


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cyclic_garbage(n: int, top: int = 25) -> dict[str, float]:
    """What a full collection finds unreachable now, per connection, by type (the objects
    that closed connections leave for the collector: only it frees reference cycles)."""
    from collections import Counter

    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.collect()
    found = Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage)
    gc.garbage.clear()
    gc.set_debug(0)
    return {k: round(v / n, 2) for k, v in found.most_common(top)}


async def gc_storms(child: asyncio.subprocess.Process, n: int, storms: int, runtime,
                    garbage: bool = False) -> list[dict]:
    """``storms`` storms of ``n`` connects, each closed again, not profiled: per storm, the
    collector's runs and seconds by generation while it opened them, its wall time, and the
    RSS and tracked objects once they are closed (cyclic garbage left uncollected shows as
    growth from storm to storm)."""
    rows = [{"before": True, "rss_kib": rss_kib(), "tracked": len(gc.get_objects())}]
    for _ in range(storms):
        counter = GcCount()
        gc.callbacks.append(counter)
        started, cpu = time.perf_counter(), time.process_time()
        child.stdin.write(f"{n}\n".encode())
        assert int(await child.stdout.readline()) == n
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        gc.callbacks.remove(counter)
        child.stdin.write(b"close\n")
        assert (await child.stdout.readline()).strip() == b"closed"
        for _ in range(100):
            await asyncio.sleep(0.1)
            if len(runtime.sio.eio.sockets) == 0:
                break
        await asyncio.sleep(1.0)
        if garbage:
            rows.append({"garbage_per_conn": cyclic_garbage(n)})
            from collections import Counter
            live = Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects())
            rows.append({"tracked_per_conn_after_close": {k: round(v / n, 2) for k, v in live.most_common(12)}})
        rows.append({"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "gc_runs": counter.runs,
                     "gc_ms": [round(x * 1000, 1) for x in counter.seconds], "gc_freed": counter.collected,
                     "rss_kib_after": rss_kib(), "tracked_after": len(gc.get_objects())})
    return rows


async def storm(child: asyncio.subprocess.Process, n: int, runtime) -> tuple[pstats.Stats, GcCount, int]:
    """One storm of ``n`` connects under cProfile; its closing is not counted."""
    counter = GcCount()
    profile = cProfile.Profile()
    gc.callbacks.append(counter)
    profile.enable()
    child.stdin.write(f"{n}\n".encode())
    opened = int(await child.stdout.readline())
    # Until the last CONNECT reply was handled here (the client has it, so it was sent).
    await asyncio.sleep(0.2)
    profile.disable()
    gc.callbacks.remove(counter)
    assert opened == n, opened
    live = len(runtime.sio.eio.sockets)
    child.stdin.write(b"close\n")
    assert (await child.stdout.readline()).strip() == b"closed"
    for _ in range(50):  # until the server forgot them
        await asyncio.sleep(0.1)
        if len(runtime.sio.eio.sockets) == 0:
            break
    return pstats.Stats(profile), counter, live


LOOP = ("~:0", "stdlib/asyncio/", "stdlib/selectors.py")


def per_function(stats: pstats.Stats) -> dict[str, int]:
    calls: dict[str, int] = {}
    for (filename, line, name), (_cc, nc, *_rest) in stats.stats.items():  # type: ignore[attr-defined]
        where = filename.replace(str(ROOT) + "/", "")
        if "site-packages/" in where:
            where = where.split("site-packages/", 1)[1]
        elif "/lib/python3" in where:
            where = "stdlib/" + where.split("/lib/python3", 1)[1].split("/", 1)[1]
        calls[f"{where}:{line}({name})"] = nc
    return calls


async def measure(args: argparse.Namespace) -> dict:
    runner, app, port = await start_bench_server()
    if args.gc_threshold:
        gc.set_threshold(*(int(x) for x in args.gc_threshold.split(",")))
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--client", str(port), "--namespace", args.namespace,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert (await child.stdout.readline()).strip() == b"warm"
    await asyncio.sleep(0.5)
    runtime = app["runtime"]
    if args.gc_storms:
        rows = await gc_storms(child, args.conns, args.gc_storms, runtime, args.garbage)
        child.stdin.write(b"\n")
        await child.wait()
        await runner.cleanup()
        return {"conns": args.conns, "storms": rows}
    small, gc_small, _ = await storm(child, args.conns, runtime)
    large, gc_large, live = await storm(child, 2 * args.conns, runtime)
    child.stdin.write(b"\n")
    await child.wait()
    await runner.cleanup()

    a, b = per_function(small), per_function(large)
    n = args.conns
    diff = {k: (b.get(k, 0) - a.get(k, 0)) / n for k in set(a) | set(b)}
    rows = sorted(((k, v) for k, v in diff.items() if abs(v) >= 0.05 and args.filter in k), key=lambda kv: -kv[1])
    # The event loop's own calls (and the built-ins') vary with how the machine's load batches
    # the loop's iterations; the Python functions outside it do not: the figure to compare.
    steady = sum(v for k, v in diff.items() if not k.startswith(LOOP))
    result = {"conns": n, "namespace": args.namespace, "live_in_second_storm": live,
              "calls_per_connect": round(steady, 1), "calls_per_connect_all": round(sum(diff.values()), 1),
              "top": [[k, round(v, 2)] for k, v in rows[:args.top]]}
    if args.gc:
        result["gc_runs_per_1k_connects"] = [round((y - x) * 1000 / n, 2) for x, y in zip(gc_small.runs, gc_large.runs)]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conns", type=int, default=500, help="connects of the first storm (the second: twice)")
    parser.add_argument("--namespace", default="/bench", help="the namespace each connection joins")
    parser.add_argument("--top", type=int, default=30, help="functions listed")
    parser.add_argument("--filter", default="", help="list only functions whose location holds this")
    parser.add_argument("--gc", action="store_true", help="also the collector's runs per 1,000 connects, by generation")
    parser.add_argument("--gc-storms", type=int, default=0, metavar="K",
                        help="instead: K storms of --conns connects, not profiled, each closed again: the "
                             "collector's runs and milliseconds per storm, RSS and tracked objects after each")
    parser.add_argument("--garbage", action="store_true",
                        help="with --gc-storms: after each storm is closed, the cyclic garbage it left, by type")
    parser.add_argument("--gc-threshold", metavar="A,B,C", help="the collector's thresholds after tune_gc's (to try others)")
    parser.add_argument("--client", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        asyncio.run(client(args.client, args.namespace))
        return 0
    result = asyncio.run(measure(args))
    if args.gc_storms:
        for row in result["storms"]:
            print(json.dumps(row))
        return 0
    print(f"Python calls per connect, outside the event loop: {result['calls_per_connect']} "
          f"(all calls: {result['calls_per_connect_all']})")
    for name, calls in result["top"]:
        print(f"{calls:8.2f}  {name}")
    print(json.dumps({k: v for k, v in result.items() if k != "top"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
