"""What one echo with ack costs the server: CPU (user and sys) and Python calls per event.

    .venv/bin/python bench/echo_cost.py [--clients 100] [--events 100] [--event-ids] [--payload 100]
                                        [--profile] [--top 25] [--loop uvloop|asyncio] [--rounds 1]

The benchmark's echo scenario (``echo``; ``echo-id`` with ``--event-ids``), deterministically
and in this process: the server runs here (the bench profile, ``bench/bench.toml``, embedded:
no Redis, ``BENCH_NAMESPACE=1``, the collector tuned as ``python -m server`` tunes it) and the
clients in a child process (its CPU is not counted): ``--clients`` WebSocket connections to
``/bench``, each sending ``echo`` with an ack ``--events`` times, one at a time (the next once
the ack is in), as the harness does, with the harness's packets: its payload
``{"i":<client>,"d":"xx…"}`` of ``--payload`` characters (default 100, as the harness's),
ack ids counting up per connection, each frame masked with a random key. With
``--event-ids`` every payload carries a fresh ``eventId`` (the dedupe path: claimed, applied
once, its ack kept for a retry). The child checks each ack echoes its payload.

Printed (one JSON line): the events, the server's CPU from ``/proc/self/stat`` in µs per event,
user and sys, the collector's runs per 1,000 events (generations 0, 1, 2); with ``--profile``,
cProfile runs over the events and the output adds the Python-visible calls per event and the
``--top`` functions by calls per event (deterministic: compare trees with them; CPU times with
``--profile`` include its overhead). With ``ECHO_COST_PSTATS=FILE`` the profile is also saved
there, for ``pstats`` (callers, cumulative times; a coroutine counts one call per resumption).
``REDIS_URL`` set: the Redis mode (see bench/inprocess.py).

For instructions per event, run it under callgrind twice, with N and 2N events, and subtract::

    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p .venv/bin/python bench/echo_cost.py --events 20
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from inprocess import start_bench_server  # noqa: E402
from raw_ws import cpu_seconds, masked_frame, read_text_frame  # noqa: E402


# ------------------------------------------------------------------ client (child process)

def echo_payload(index: int, size: int) -> dict:
    """The harness's echo payload (../shared/bench/client/loadgen.js makeEchoPayload): client
    ``index``'s ``{"i": index, "d": "xx…"}``, padded to ``size`` characters of JSON; the
    same object on every echo of that client."""
    base = len(json.dumps({"i": index, "d": ""}, separators=(",", ":")))
    return {"i": index, "d": "x" * max(0, size - base)}


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                  f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    await reader.readuntil(b"\r\n\r\n")
    assert (await read_text_frame(reader)).startswith("0")  # Engine.IO OPEN
    writer.write(masked_frame("40/bench,"))
    while not (await read_text_frame(reader)).startswith("40/bench,"):
        pass
    return reader, writer


async def _echoes(index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  events: int, event_ids: bool, round_no: int, size: int) -> bool:
    """Send ``events`` echoes one at a time; True when every ack echoed its payload. Without
    ``event_ids``, exactly the harness's packets: ``42/bench,<id>["echo",<payload>]`` with the
    client's ack ids counting up from 0 over the connection's life, and the ack checked
    byte for byte as the harness's client checks it first."""
    for i in range(events):
        ack = round_no * events + i
        if event_ids:
            payload = {"eventId": f"c{index}-r{round_no}-{i}", "text": "hello"}
        else:
            payload = echo_payload(index, size)
        body = json.dumps(payload, separators=(",", ":"))
        writer.write(masked_frame('42/bench,%d["echo",%s]' % (ack, body)))
        while True:
            text = await asyncio.wait_for(read_text_frame(reader), 30)
            if text.startswith("43/bench,"):
                break
            if text == "2":
                writer.write(masked_frame("3"))
        if text != "43/bench,%d[%s]" % (ack, body):  # else equal as JSON, as the harness allows
            ack_id, _, rest = text[len("43/bench,"):].partition("[")
            if int(ack_id) != ack or json.loads("[" + rest) != [payload]:
                return False
    return True


async def client(port: int, clients: int, events: int, event_ids: bool, rounds: int, size: int) -> None:
    sem = asyncio.Semaphore(100)

    async def one():
        async with sem:
            return await _connect(port)

    conns = await asyncio.gather(*(one() for _ in range(clients)))
    print("joined", flush=True)
    loop = asyncio.get_running_loop()
    for round_no in range(rounds):
        await loop.run_in_executor(None, sys.stdin.readline)  # the server is measuring
        ok = await asyncio.gather(*(_echoes(i, r, w, events, event_ids, round_no, size)
                                    for i, (r, w) in enumerate(conns)))
        print(json.dumps({"complete": sum(ok)}), flush=True)
    for _, writer in conns:
        writer.close()


# ------------------------------------------------------------------ server (this process)

async def measure(args: argparse.Namespace) -> dict:
    runner, app, port = await start_bench_server()
    from server.codec import COMPILED

    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--client", str(port), "--clients", str(args.clients),
        "--events", str(args.events), "--rounds", str(args.rounds), "--payload", str(args.payload),
        *(["--event-ids"] if args.event_ids else []),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert (await child.stdout.readline()).strip() == b"joined"
    await asyncio.sleep(0.5)
    events = args.clients * args.events
    runs = []
    profile = None
    collections = [0, 0, 0]  # the collector's runs per generation while measuring

    def count_collections(phase: str, info: dict) -> None:
        if phase == "start":
            collections[info["generation"]] += 1
    for _ in range(args.rounds):
        if args.profile:
            import cProfile

            profile = cProfile.Profile()
        user0, sys0 = cpu_seconds()
        if profile is not None:
            profile.enable()
        gc.callbacks.append(count_collections)
        child.stdin.write(b"go\n")
        line = await child.stdout.readline()
        gc.callbacks.remove(count_collections)
        if profile is not None:
            profile.disable()
        user1, sys1 = cpu_seconds()
        complete = json.loads(line)["complete"]
        if complete != args.clients:
            raise SystemExit(f"only {complete} of {args.clients} clients got every ack right")
        runs.append(((user1 - user0) * 1e6 / events, (sys1 - sys0) * 1e6 / events))
    result = {"clients": args.clients, "events": events, "event_ids": args.event_ids, "payload": args.payload,
              "compiled_codec": COMPILED, "loop": args.loop, "profile": args.profile,
              "user_us_per_event": round(statistics.median(u for u, _ in runs), 3),
              "sys_us_per_event": round(statistics.median(s for _, s in runs), 3),
              "runs_user_sys_us": [[round(u, 2), round(s, 2)] for u, s in runs],
              "gc_collections_per_1k_events": [round(n * 1000 / (events * args.rounds), 3) for n in collections]}
    if profile is not None:
        import pstats

        if os.environ.get("ECHO_COST_PSTATS"):
            profile.dump_stats(os.environ["ECHO_COST_PSTATS"])
        stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
        total = sum(nc for (_, nc, _, _, _) in stats.values())
        result["calls_per_event"] = round(total / events, 3)
        top = sorted(stats.items(), key=lambda kv: -kv[1][1])[:args.top]
        result["top_calls_per_event"] = [
            [f"{Path(f).name}:{line}({name})", round(nc / events, 3), round(tt * 1e6 / events, 3)]
            for (f, line, name), (_, nc, tt, _, _) in top]
    child.stdin.close()
    await child.wait()
    await runner.cleanup()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100, help="WebSocket clients on /bench")
    parser.add_argument("--events", type=int, default=100, help="echoes each client sends per round")
    parser.add_argument("--event-ids", action="store_true", help="an eventId in every payload (dedupe on)")
    parser.add_argument("--payload", type=int, default=100,
                        help="JSON characters of each echo payload (the harness's --payload, default 100)")
    parser.add_argument("--rounds", type=int, default=1, help="measures against the same server (median)")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--profile", action="store_true", help="cProfile the events: calls per event")
    parser.add_argument("--top", type=int, default=25, help="functions listed with --profile")
    parser.add_argument("--client", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        asyncio.run(client(args.client, args.clients, args.events, args.event_ids, args.rounds, args.payload))
        return 0
    if args.loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    result = asyncio.run(measure(args))
    if args.profile:
        print(f"{'function':60} calls/event  µs/event (own, profiled)")
        for name, calls, own in result["top_calls_per_event"]:
            print(f"{name[-60:]:60} {calls:10.3f} {own:10.3f}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
