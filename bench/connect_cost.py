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
milliseconds by generation) and the RSS after each, closed again. ``--stages 5000,10000`` instead
does what the harness's conns scenario does (bench/run.sh; ``scenarioConns`` in the shared
loadgen.js): opens the first stage's connections and keeps them open (answering heartbeats),
waits ``--settle`` seconds, then opens the next stage's on top of them, and so on; per stage,
the server's CPU (this process's, the client is a child), in µs per connect, the collector's
runs and milliseconds, the wall time and the RSS (``--profile`` adds Python calls per connect
of the last stage; ``--garbage`` the cyclic garbage each stage's connects made). With
``--node-client`` the client is the harness's own (the shared loadgen.js, Node: fast enough that
the server is the limit, as in bench/run.sh) and the server samples itself every 10 ms to split
its CPU by stage. ``--loop uvloop`` runs the server on uvloop, as ``python -m server`` does.
CPU per connect moves with the machine's load (run old and new trees interleaved, several
times); the collector's runs per stage do not. ``--freeze-young`` is an experiment (not what
the server does): ``gc.freeze()`` after every young collection, so no survivor is scanned again.
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
        held: list = []  # the stages' connections, kept open
        held_keepers: list = []
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
            if not line:
                for k in held_keepers:
                    k.cancel()
                for ws in held:
                    await ws.close()
                return
            sem = asyncio.Semaphore(100)
            if line.startswith("+"):  # a stage: open that many more and keep them all

                async def kept():
                    async with sem:
                        ws = await _connect(session, url, namespace)
                    held_keepers.append(asyncio.ensure_future(_keep_alive(ws)))  # as soon as open
                    return ws

                held.extend(await asyncio.gather(*(kept() for _ in range(int(line[1:])))))
                print(len(held), flush=True)
                continue

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


async def stages(child: asyncio.subprocess.Process, targets: list[int], settle: float,
                 profile_last: bool, garbage: bool = False) -> tuple[list[dict], pstats.Stats | None, int]:
    """The harness's conns scenario: per stage, open connections up to its target on top of
    the ones kept open; what the server spent on each stage (CPU of this process, the
    collector's runs and milliseconds by generation), and the last stage's profile."""
    rows, profile, opened = [], None, 0
    for i, target in enumerate(targets):
        need = target - opened
        last = i == len(targets) - 1
        counter = GcCount()
        gc.callbacks.append(counter)
        if garbage:  # what the collector finds unreachable in this stage is kept to be counted
            gc.set_debug(gc.DEBUG_SAVEALL)
        if last and profile_last:
            profile = cProfile.Profile()
            profile.enable()
        started, cpu = time.perf_counter(), time.process_time()
        child.stdin.write(f"+{need}\n".encode())
        opened = int(await child.stdout.readline())
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        if profile is not None:
            profile.disable()
        gc.callbacks.remove(counter)
        assert opened == target, (opened, target)
        rows.append({"stage": f"{target - need}->{target}", "wall_s": round(wall, 2),
                     "connects_per_s": round(need / wall), "cpu_us_per_connect": round(cpu * 1e6 / need, 1),
                     "gc_runs": counter.runs, "gc_ms": [round(x * 1000, 1) for x in counter.seconds],
                     "gc_share": round(sum(counter.seconds) / cpu, 3) if cpu else 0.0,
                     "rss_kib": rss_kib(), "tracked": len(gc.get_objects())})
        if garbage:
            rows.append({"garbage_per_connect": cyclic_garbage(need)})
        if not last:
            await asyncio.sleep(settle)  # the harness's conn-settle, then its probe (not made here)
    return rows, (pstats.Stats(profile) if profile is not None else None), targets[-1] - targets[-2] if len(targets) > 1 else targets[0]


def loadgen() -> Path:
    """The shared harness's load generator, found as bench/run.sh finds it ($SHARED_BENCH, or
    ../shared/bench of the main checkout, also from a git worktree elsewhere)."""
    import os
    import subprocess

    if os.environ.get("SHARED_BENCH"):
        return Path(os.environ["SHARED_BENCH"]) / "client" / "loadgen.js"
    shared = ROOT.parent / "shared" / "bench"
    if not shared.is_dir():
        common = subprocess.run(["git", "rev-parse", "--path-format=absolute", "--git-common-dir"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip()
        shared = Path(common).parent.parent / "shared" / "bench"
    return shared / "client" / "loadgen.js"


async def node_stages(port: int, targets: list[int], settle: float, runtime) -> tuple[list[dict], list[dict]]:
    """The harness's own client (``--conn-stages``, Node, the shared loadgen.js) against this
    server, which samples itself every 10 ms (connections open, its CPU, the collector's runs
    and time): per stage, from the first connection above the previous stage's count to the
    last one of its own, the server's CPU per connect and the collector's work in between.
    The client's lines (its connects/s) come back as they are."""
    import os

    sockets = runtime.sio.eio.sockets
    counter = GcCount()
    gc.callbacks.append(counter)
    samples: list[tuple[int, float, float, list[int], list[float]]] = []
    loop = asyncio.get_running_loop()

    def sample() -> None:
        samples.append((len(sockets), time.perf_counter(), time.process_time(), list(counter.runs),
                        list(counter.seconds)))
        handle[0] = loop.call_later(0.01, sample)

    handle = [loop.call_later(0.01, sample)]
    child = await asyncio.create_subprocess_exec(
        "node", str(loadgen()), "--scenario", "conns", "--port", str(port), "--server-pid", str(os.getpid()),
        "--conn-stages", ",".join(map(str, targets)), "--conn-settle", str(settle), "--target", "in-process",
        stdout=asyncio.subprocess.PIPE)
    out = await child.stdout.read()
    await child.wait()
    handle[0].cancel()
    gc.callbacks.remove(counter)
    rows, floor = [], 0
    for target in targets:
        last = next(i for i, row in enumerate(samples) if row[0] >= target)
        # from the last sample at the previous stage's count (after the client's warm-up)
        first = max(i for i, row in enumerate(samples[:last]) if row[0] <= floor)
        a, b = samples[first], samples[last]
        n = b[0] - a[0]
        cpu = b[2] - a[2]
        rows.append({"stage": f"{floor}->{target}", "wall_s": round(b[1] - a[1], 2),
                     "cpu_us_per_connect": round(cpu * 1e6 / n, 1), "server_cpu_pct": round(100 * cpu / (b[1] - a[1])),
                     "gc_runs": [y - x for x, y in zip(a[3], b[3])], "gc_ms": round((sum(b[4]) - sum(a[4])) * 1000, 1),
                     "gc_ms_by_gen": [round((y - x) * 1000, 1) for x, y in zip(a[4], b[4])],
                     "gc_share": round((sum(b[4]) - sum(a[4])) / cpu, 3)})
        if target != targets[-1]:  # the settle after it: what the open connections cost idle
            nxt = next(i for i, row in enumerate(samples) if row[0] > target)
            c, d = samples[last + 5], samples[max(last + 6, nxt - 5)]
            rows[-1]["idle_cpu_pct_after"] = round(100 * (d[2] - c[2]) / (d[1] - c[1]), 2)
        floor = target
    lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    client = [{k: line.get(k) for k in ("conns_target", "conns_per_s", "kib_per_conn", "holds")} for line in lines]
    return rows, client


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
    if args.freeze_young:
        def freeze(phase, info):
            if phase == "stop" and info["generation"] == 0:
                gc.freeze()
        gc.callbacks.append(freeze)
    if args.node_client:
        rows, client_rows = await node_stages(port, [int(x) for x in args.stages.split(",")], args.settle,
                                              app["runtime"])
        await runner.cleanup()
        return {"loop": args.loop, "stages": rows + client_rows}
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--client", str(port), "--namespace", args.namespace,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert (await child.stdout.readline()).strip() == b"warm"
    await asyncio.sleep(0.5)
    runtime = app["runtime"]
    if args.stages:
        targets = [int(x) for x in args.stages.split(",")]
        rows, stats, n = await stages(child, targets, args.settle, args.profile, args.garbage)
        child.stdin.write(b"\n")
        await child.wait()
        await runner.cleanup()
        result = {"loop": args.loop, "stages": rows}
        if stats is not None:
            if args.pstats:
                stats.dump_stats(args.pstats)
            calls = per_function(stats)
            result["calls_per_connect_last_stage"] = round(
                sum(v for k, v in calls.items() if not k.startswith(LOOP)) / n, 1)
            result["top_last_stage"] = [[k, round(v / n, 2)] for k, v in sorted(
                calls.items(), key=lambda kv: -kv[1]) if args.filter in k][:args.top]
        return result
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
                        help="with --gc-storms: after each storm is closed, the cyclic garbage it left, by type; with "
                             "--stages: the cyclic garbage each stage's connects made (kept until counted)")
    parser.add_argument("--gc-threshold", metavar="A,B,C", help="the collector's thresholds after tune_gc's (to try others)")
    parser.add_argument("--stages", metavar="N1,N2,...",
                        help="instead: the harness's conns scenario (e.g. 5000,10000): each stage opens "
                             "connections up to its count on top of the ones kept open; the server's CPU "
                             "per connect, the collector's work, wall time and RSS per stage")
    parser.add_argument("--settle", type=float, default=3.0, help="with --stages: seconds between stages")
    parser.add_argument("--profile", action="store_true", help="with --stages: profile the last stage too")
    parser.add_argument("--pstats", metavar="FILE", help="with --stages --profile: save the profile for pstats")
    parser.add_argument("--node-client", action="store_true",
                        help="with --stages: the harness's own Node client (../shared/bench/client/loadgen.js, "
                             "faster than the Python one, so the server is the limit as in bench/run.sh)")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                        help="the server's event loop (python -m server runs uvloop)")
    parser.add_argument("--freeze-young", action="store_true", help="experiment: gc.freeze() after each young collection")
    parser.add_argument("--client", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        asyncio.run(client(args.client, args.namespace))
        return 0
    if args.loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    result = asyncio.run(measure(args))
    if args.stages:
        for row in result["stages"]:
            print(json.dumps(row))
        if "top_last_stage" in result:
            print(f"Python calls per connect in the last stage, outside the event loop: "
                  f"{result['calls_per_connect_last_stage']}")
            for name, calls in result["top_last_stage"]:
                print(f"{calls:8.2f}  {name}")
        return 0
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
