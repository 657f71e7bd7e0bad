"""What one fan-out delivery costs the server: CPU (user and sys) and Python calls per delivery.

    .venv/bin/python bench/fanout_cost.py [--clients 1000] [--fanouts 200] [--rate 50]
                                          [--profile] [--top 25] [--loop uvloop|asyncio]

The benchmark's fan-out scenario, deterministically and in this process: the server runs here
(the bench profile, ``bench/bench.toml``, embedded: no Redis, ``BENCH_NAMESPACE=1``, the
collector tuned as ``python -m server`` tunes it) and a client in a child process (its CPU is
not counted) opens ``--clients`` WebSocket connections to ``/bench`` and joins each to room
``r``. Then client 0 sends ``fanout {room: "r"}`` ``--fanouts`` times at ``--rate`` a second
(the harness's 50 by default: one fan-out per event-loop turn, as in the benchmark); the
server publishes each to the room's channel and writes it to every member. The other clients
do not read during the run (each one's frames fit in its kernel socket buffer, so the server's
writes are the same as with a reader; the client's own CPU stays out of the machine's noise);
afterwards the child reads every socket and checks each received every fan-out, in order.

Printed (one JSON line): the deliveries, and the server's CPU from ``/proc/self/stat`` over
the run, user and sys, in µs per delivery (sys is mostly the kernel's loopback TCP work of each
socket write, which any server pays). With ``--profile``, cProfile runs over the fan-outs
instead (CPU times then include its overhead: compare them only with other ``--profile``
runs) and the output adds the Python-visible calls per delivery and the ``--top`` functions by
calls per delivery. Calls are deterministic: compare trees with them. CPU is noisy on a shared
machine: compare trees with interleaved runs (``--rounds 3`` runs the measure three times
against one server and prints the median). With ``FANOUT_COST_PSTATS=FILE`` the profile is
also saved there, for ``pstats`` (callers, cumulative times). With ``FANOUT_COST_PERF=FILE``,
``perf record -g`` samples the server over the fan-outs into FILE (``perf report -i FILE
--sort dso,sym``: the kernel's share against each library's).

For instructions per delivery, run it under callgrind twice, with N and 2N fan-outs, and
subtract (start-up cancels)::

    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p .venv/bin/python bench/fanout_cost.py --fanouts 20
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from inprocess import start_bench_server  # noqa: E402
from raw_ws import cpu_seconds, masked_frame, read_text_frame  # noqa: E402

# The fan-out's frames are masked with a zero key (the same bytes as the text), as before.
ZERO_MASK = b"\0\0\0\0"
ROOM = "r"


# ------------------------------------------------------------------ client (child process)

async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                  f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    await reader.readuntil(b"\r\n\r\n")
    assert (await read_text_frame(reader)).startswith("0")  # Engine.IO OPEN
    writer.write(masked_frame("40/bench,", ZERO_MASK))
    while not (await read_text_frame(reader)).startswith("40/bench,"):
        pass
    writer.write(masked_frame(f'42/bench,1["join","{ROOM}"]', ZERO_MASK))
    while not (await read_text_frame(reader)).startswith("43/bench,1"):
        pass
    return reader, writer


async def _received(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, fanouts: int) -> bool:
    """Read a client's fan-outs: True when all ``fanouts`` came, in order (their offsets).
    A heartbeat PING read meanwhile is answered."""
    last = 0
    for _ in range(fanouts):
        while True:
            text = await asyncio.wait_for(read_text_frame(reader), 30)
            if text.startswith('42/bench,["msg"'):
                break
            if text == "2":
                writer.write(masked_frame("3", ZERO_MASK))
        offset = int(json.loads(text[len("42/bench,"):])[-1].split("~")[0])  # "<offset>~<tag>"
        if offset != last + 1 and last:
            return False
        last = offset
    return True


async def client(port: int, clients: int, fanouts: int, rate: float, rounds: int) -> None:
    sem = asyncio.Semaphore(100)

    async def one():
        async with sem:
            return await _connect(port)

    conns = await asyncio.gather(*(one() for _ in range(clients)))
    print("joined", flush=True)
    loop = asyncio.get_running_loop()
    frame = masked_frame('42/bench,["fanout",{"room":"%s","payload":{"text":"hello, room"}}]' % ROOM, ZERO_MASK)
    for _ in range(rounds):
        await loop.run_in_executor(None, sys.stdin.readline)  # the server is measuring
        writer = conns[0][1]
        start = loop.time()
        for i in range(fanouts):
            writer.write(frame)
            await asyncio.sleep(max(0.0, start + (i + 1) / rate - loop.time()))
        ok = await asyncio.gather(*(_received(r, w, fanouts) for r, w in conns))
        print(json.dumps({"complete": sum(ok)}), flush=True)
    for _, writer in conns:
        writer.close()


# ------------------------------------------------------------------ server (this process)

async def measure(args: argparse.Namespace) -> dict:
    runner, app, port = await start_bench_server()
    from server.codec import COMPILED

    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--client", str(port), "--clients", str(args.clients),
        "--fanouts", str(args.fanouts), "--rate", str(args.rate), "--rounds", str(args.rounds),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert (await child.stdout.readline()).strip() == b"joined"
    await asyncio.sleep(0.5)
    deliveries = args.clients * args.fanouts
    runs = []
    profile = None
    for _ in range(args.rounds):
        if args.profile:
            import cProfile

            profile = cProfile.Profile()
        user0, sys0 = cpu_seconds()
        if profile is not None:
            profile.enable()
        perf = None
        if os.environ.get("FANOUT_COST_PERF"):
            perf = subprocess.Popen(["perf", "record", "-F", "4000", "-g", "-p", str(os.getpid()),
                                     "-o", os.environ["FANOUT_COST_PERF"]], stderr=subprocess.DEVNULL)
            await asyncio.sleep(0.5)  # perf attached
        child.stdin.write(b"go\n")
        line = await child.stdout.readline()
        if perf is not None:
            perf.send_signal(signal.SIGINT)
            perf.wait()
        if profile is not None:
            profile.disable()
        user1, sys1 = cpu_seconds()
        complete = json.loads(line)["complete"]
        if complete != args.clients:
            raise SystemExit(f"only {complete} of {args.clients} clients received every fan-out in order")
        runs.append(((user1 - user0) * 1e6 / deliveries, (sys1 - sys0) * 1e6 / deliveries))
    result = {"clients": args.clients, "fanouts": args.fanouts, "rate": args.rate, "deliveries": deliveries,
              "compiled_codec": COMPILED, "loop": args.loop, "profile": args.profile,
              "user_us_per_delivery": round(statistics.median(u for u, _ in runs), 3),
              "sys_us_per_delivery": round(statistics.median(s for _, s in runs), 3),
              "runs_user_sys_us": [[round(u, 2), round(s, 2)] for u, s in runs]}
    if profile is not None:
        import pstats

        if os.environ.get("FANOUT_COST_PSTATS"):
            profile.dump_stats(os.environ["FANOUT_COST_PSTATS"])
        stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
        total = sum(nc for (_, nc, _, _, _) in stats.values())
        result["calls_per_delivery"] = round(total / deliveries, 3)
        top = sorted(stats.items(), key=lambda kv: -kv[1][1])[:args.top]
        result["top_calls_per_delivery"] = [
            [f"{Path(f).name}:{line}({name})", round(nc / deliveries, 3), round(tt * 1e6 / deliveries, 3)]
            for (f, line, name), (_, nc, tt, _, _) in top]
    child.stdin.close()
    await child.wait()
    await runner.cleanup()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000, help="WebSocket clients in room r")
    parser.add_argument("--fanouts", type=int, default=200, help="fan-outs client 0 sends per round")
    parser.add_argument("--rate", type=float, default=50.0, help="fan-outs per second")
    parser.add_argument("--rounds", type=int, default=1, help="measures against the same server (median)")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--profile", action="store_true", help="cProfile the fan-outs: calls per delivery")
    parser.add_argument("--top", type=int, default=25, help="functions listed with --profile")
    parser.add_argument("--client", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        asyncio.run(client(args.client, args.clients, args.fanouts, args.rate, args.rounds))
        return 0
    if args.loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    result = asyncio.run(measure(args))
    if args.profile:
        print(f"{'function':60} calls/delivery  µs/delivery (own, profiled)")
        for name, calls, own in result["top_calls_per_delivery"]:
            print(f"{name[-60:]:60} {calls:10.3f} {own:10.3f}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
