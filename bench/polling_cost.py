"""What one long-polling echo round costs the server in work: Python calls per round, by function.

    .venv/bin/python bench/polling_cost.py [--clients 20] [--rounds 50] [--top 30] [--filter server/]
                                           [--cpu N]

Runs the server in this process (the bench profile, ``bench/bench.toml``, embedded, plain
asyncio) and raw HTTP/1.1 polling clients in a child process: each opens a polling session,
CONNECTs to ``/bench``, then does rounds of one ``emit('echo', payload, ack)``: a long-poll
GET pending on one keep-alive connection, the event's POST on a second, the POST's ``ok`` and
the GET's ack (``430[...]``) read back. Two runs under cProfile, ``--rounds`` and three times
as many rounds per client; the difference of the two profiles divided by the difference of
rounds (× clients) is the work of one round without what a run costs once. Call counts do not
depend on the machine's load (the event loop's own and the built-ins' a little: both figures
are given), so one run is enough to compare two trees. ``--cpu N`` instead runs N unprofiled runs of
``--rounds`` rounds and gives the server's CPU time (this process's user + system) per round of
each: it moves with the machine's load, compare trees interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from inprocess import start_bench_server  # noqa: E402


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes,
                   body: bytes = b"") -> bytes:
    writer.write(head + body)
    return await _response(reader)


async def _response(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    assert head.startswith(b"HTTP/1.1 200"), head
    return await reader.readexactly(length)


class Client:
    """One polling client: a GET connection and a POST connection, both keep-alive."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sid = ""

    async def open(self) -> None:
        self.get = await asyncio.open_connection("127.0.0.1", self.port)
        self.post = await asyncio.open_connection("127.0.0.1", self.port)
        body = await _request(*self.get, b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n")
        self.sid = json.loads(body[1:])["sid"]
        self.qs = f"/socket.io/?EIO=4&transport=polling&sid={self.sid}".encode()
        await self._post(b"40/bench,")
        reply = await self._get()
        assert reply.startswith(b"40/bench,"), reply

    async def _post(self, payload: bytes) -> None:
        head = (b"POST " + self.qs + b" HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain;charset=UTF-8\r\n"
                b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n")
        assert await _request(*self.post, head, payload) == b"ok"

    async def _get(self) -> bytes:
        return await _request(*self.get, b"GET " + self.qs + b" HTTP/1.1\r\nHost: x\r\n\r\n")

    async def rounds(self, n: int) -> None:
        for i in range(n):
            self.get[1].write(b"GET " + self.qs + b" HTTP/1.1\r\nHost: x\r\n\r\n")  # pending first
            await self._post(b'42/bench,%d["echo","payload-%d"]' % (i, i))
            reply = await _response(self.get[0])
            assert reply == b'43/bench,%d["payload-%d"]' % (i, i), reply


async def client(port: int, clients: int) -> None:
    """Runs on command: reads a round count from stdin, does that many on every client, says
    ``done``; an empty line ends."""
    loop = asyncio.get_running_loop()
    group = [Client(port) for _ in range(clients)]
    for c in group:
        await c.open()
    await asyncio.gather(*(c.rounds(5) for c in group))
    print("warm", flush=True)
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if not line:
            return
        await asyncio.gather(*(c.rounds(int(line)) for c in group))
        print("done", flush=True)


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


async def run(child: asyncio.subprocess.Process, rounds: int) -> pstats.Stats:
    profile = cProfile.Profile()
    profile.enable()
    child.stdin.write(f"{rounds}\n".encode())
    assert (await child.stdout.readline()).strip() == b"done"
    await asyncio.sleep(0.1)
    profile.disable()
    return pstats.Stats(profile)


async def measure(args: argparse.Namespace) -> dict:
    runner, app, port = await start_bench_server()
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--client", str(port), "--clients", str(args.clients),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert (await child.stdout.readline()).strip() == b"warm"
    if args.cpu:
        per_round = []
        for _ in range(args.cpu):
            started = os.times()
            child.stdin.write(f"{args.rounds}\n".encode())
            assert (await child.stdout.readline()).strip() == b"done"
            ended = os.times()
            cpu = (ended.user - started.user) + (ended.system - started.system)
            per_round.append(round(cpu / (args.rounds * args.clients) * 1e6, 1))
        child.stdin.write(b"\n")
        await child.wait()
        await runner.cleanup()
        return {"clients": args.clients, "rounds": args.rounds, "cpu_us_per_round": per_round}
    small = per_function(await run(child, args.rounds))
    large = per_function(await run(child, 3 * args.rounds))
    child.stdin.write(b"\n")
    await child.wait()
    await runner.cleanup()
    n = 2 * args.rounds * args.clients
    diff = {k: (large.get(k, 0) - small.get(k, 0)) / n for k in set(small) | set(large)}
    rows = sorted(((k, v) for k, v in diff.items() if abs(v) >= 0.05 and args.filter in k), key=lambda kv: -kv[1])
    steady = sum(v for k, v in diff.items() if not k.startswith(LOOP))
    return {"clients": args.clients, "rounds": args.rounds, "calls_per_round": round(steady, 1),
            "calls_per_round_all": round(sum(diff.values()), 1),
            "top": [[k, round(v, 2)] for k, v in rows[:args.top]]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20, help="polling clients")
    parser.add_argument("--rounds", type=int, default=50, help="rounds per client of the first run (the second: 3x)")
    parser.add_argument("--top", type=int, default=30, help="functions listed")
    parser.add_argument("--filter", default="", help="list only functions whose location holds this")
    parser.add_argument("--cpu", type=int, default=0, metavar="N",
                        help="instead: N unprofiled runs, the server's CPU microseconds per round of each")
    parser.add_argument("--client", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        asyncio.run(client(args.client, args.clients))
        return 0
    result = asyncio.run(measure(args))
    if args.cpu:
        print(json.dumps(result))
        return 0
    print(f"Python calls per round, outside the event loop: {result['calls_per_round']} "
          f"(all calls: {result['calls_per_round_all']})")
    for name, calls in result["top"]:
        print(f"{calls:8.2f}  {name}")
    print(json.dumps({k: v for k, v in result.items() if k != "top"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
