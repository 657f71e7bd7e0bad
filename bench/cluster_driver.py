"""Publisher and meter of the `cluster` scenario (bench/cluster.sh runs it on the load
generator's core, once per topology: one Redis, then a 3-master Redis Cluster).

Two bench/publish_clients.js children join the server's ``/chat``: ``--rooms`` rooms of
``--members`` clients each (``spread-0`` ..) and one room of ``--members`` clients (``hot``).
The sync :class:`realtime_channels.emitter.Emitter` (``--window`` threads; on a cluster a
``redis.RedisCluster`` client and ``SPUBLISH``, as the server) then publishes ``--count`` ``pub``
events as fast as the window allows, per phase:

- ``spread``: round-robin over the ``--rooms`` rooms, so over every master of a cluster (each
  room is a channel, its keys in the slot of its hash tag);
- ``hot``: all to the one ``hot`` room, so to one master whatever the topology;
- ``nosub``: round-robin over ``--rooms`` rooms nobody joined: Redis's publish without any
  delivery (the server has no subscription for them).

Per phase one JSON line: publishes/s (until the last call returned), deliveries/s (until the
last delivery arrived), delivery latency, and the CPU time each redis-server reports in ``INFO
cpu`` (``used_cpu_sys`` + ``used_cpu_user``, read before and after; minus each node's idle
rate, read over ``--idle`` s before the phases: cluster gossip, the server's timers): per
publish on the masters and on the replicas, each master's share, and the busiest master's % of
one core — the figures the README's arithmetic stands on — and the masters' time inside the
publish script (``INFO commandstats`` of EVALSHA: the floor, without network I/O). The server's own CPU time per
delivery comes from /proc. ``summarize FILE`` prints the table of a run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import redis

from publish_driver import CLK_TCK, Clients, cpu_split, med, proc_ticks, rows_by, run_phase

PHASES = ("spread", "hot", "nosub")


class RoomsPublisher:
    """publish_driver.run_phase's publisher: the sync emitter, publication k to ``rooms[k % n]``."""

    is_async = False

    def __init__(self, emitter: Any, rooms: list[str]) -> None:
        self.emitter, self.rooms = emitter, rooms

    def sync_call(self, arg: dict[str, Any]) -> None:
        self.emitter.emit("pub", arg, room="room:" + self.rooms[arg["i"] % len(self.rooms)], namespace="/chat")


def make_emitter(state: dict[str, Any]) -> Any:
    """An Emitter on the run's Redis: a RedisCluster client and sharded notifications on a
    cluster, as the server uses them there."""
    from realtime_channels.emitter import Emitter
    if state["topology"] == "cluster":
        return Emitter(client=redis.RedisCluster(host="127.0.0.1", port=state["ports"][0]), sharded=True)
    return Emitter(state["url"])


def gap_reads(port: int) -> float:
    """The server's history reads to fill a gap in a channel's notifications (its /metrics):
    Redis work besides the publishes, when a node falls behind or misses a notification."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return float("nan")
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("rt_channel_history_reads_total{") and '"gap"' in line)


class RedisNodes:
    """``INFO`` of every redis-server of the run (masters and replicas)."""

    def __init__(self, ports: list[int]) -> None:
        self.clients = {p: redis.Redis(port=p, socket_timeout=5) for p in ports}
        self.idle: dict[int, float] = {p: 0.0 for p in ports}

    def roles(self) -> dict[int, str]:
        return {p: c.info("replication")["role"] for p, c in self.clients.items()}

    def cpu(self) -> dict[int, float]:
        """Port -> CPU seconds (sys + user) the node has used since it started."""
        out = {}
        for p, c in self.clients.items():
            info = c.info("cpu")
            out[p] = float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
        return out

    def script_seconds(self) -> dict[int, float]:
        """Port -> seconds spent running scripts (INFO commandstats of EVAL and EVALSHA, which
        include the commands a script calls): the publish itself, without the process's network
        I/O and event loop."""
        return {p: sum(v["usec"] for k, v in c.info("commandstats").items()
                       if k in ("cmdstat_eval", "cmdstat_evalsha")) / 1e6
                for p, c in self.clients.items()}

    def measure_idle(self, seconds: float) -> None:
        """Each node's CPU seconds per second with nobody publishing (subtracted from phases)."""
        before = self.cpu()
        time.sleep(seconds)
        after = self.cpu()
        self.idle = {p: max(0.0, (after[p] - before[p]) / seconds) for p in after}

    def close(self) -> None:
        for c in self.clients.values():
            c.close()


def redis_figures(nodes: RedisNodes, roles: dict[int, str], before: dict[int, float], after: dict[int, float],
                  script_before: dict[int, float], script_after: dict[int, float], span: float,
                  published: int) -> dict[str, Any]:
    """CPU per publish on the masters and replicas (idle rate subtracted), the masters' script
    time per publish, masters' shares and the busiest master's % of one core over
    ``span`` s."""
    used = {p: max(0.0, after[p] - before[p] - nodes.idle[p] * span) for p in after}
    masters = sorted((used[p] for p in used if roles[p] == "master"), reverse=True)
    replicas = [used[p] for p in used if roles[p] != "master"]
    per = lambda s: round(s * 1e6 / published, 1) if published else None  # noqa: E731 - µs per publish
    total = sum(masters)
    script = sum(script_after[p] - script_before[p] for p in script_after if roles[p] == "master")
    return {
        "redis_masters": len(masters),
        "redis_us_per_publish": per(total), "redis_script_us_per_publish": per(script),
        "replica_us_per_publish": per(sum(replicas)) if replicas else None,
        "master_cpu_s": [round(x, 4) for x in masters], "replica_cpu_s": [round(x, 4) for x in replicas],
        "master_shares": [round(x / total, 2) for x in masters] if total else None,
        "busiest_master_cpu_pct": round(masters[0] * 100 / span, 1) if masters else None,
        "redis_idle_cpu_pct": round(sum(nodes.idle.values()) * 100, 2),
    }


async def measure(args: argparse.Namespace) -> None:
    state = json.loads(Path(args.state).read_text())
    spinners = frozenset(int(p) for p in args.spinners.split(",") if p)
    nodes = RedisNodes(state["ports"])
    roles = nodes.roles()
    emitter = make_emitter(state)
    rooms = args.rooms
    count = max(rooms, args.count // rooms * rooms)  # a multiple of the rooms: every client gets as many
    spread = await asyncio.to_thread(Clients, args.port, rooms * args.members, "spread", args.node, rooms)
    hot = await asyncio.to_thread(Clients, args.port, args.members, "hot", args.node)
    receivers = {"spread": spread, "hot": hot, "nosub": None}
    targets = {"spread": [f"spread-{k}" for k in range(rooms)], "hot": ["hot"],
               "nosub": [f"quiet-{k}" for k in range(rooms)]}
    try:
        await asyncio.to_thread(spread.line)  # ready: every client joined
        await asyncio.to_thread(hot.line)
        await asyncio.to_thread(nodes.measure_idle, args.idle)
        for phase in ("spread", "hot"):  # warm-up, not reported
            pub = RoomsPublisher(emitter, targets[phase])
            row = await run_phase(pub, "warm" + phase, rooms * 10, args.window, None)
            await asyncio.to_thread(receivers[phase].report, "warm" + phase, row["published"])
        for phase in PHASES:
            await asyncio.sleep(0.5)
            g0 = gap_reads(args.port)
            c0, r0, p0, t0 = nodes.script_seconds(), nodes.cpu(), proc_ticks(), time.perf_counter()
            row = await run_phase(RoomsPublisher(emitter, targets[phase]), phase, count, args.window, None)
            clients = receivers[phase]
            delivered = await asyncio.to_thread(clients.report, phase, row["published"]) if clients else None
            span = time.perf_counter() - t0
            r1, p1, c1 = nodes.cpu(), proc_ticks(), nodes.script_seconds()
            gaps = gap_reads(args.port) - g0
            spid = state["server_pid"]
            server_s = (p1.get(spid, (0, 0))[1] - p0.get(spid, (0, 0))[1]) / CLK_TCK
            deliveries = delivered["deliveries"] if delivered else 0
            print(json.dumps({
                "scenario": "cluster", "topology": state["topology"], "phase": phase, "rooms": len(targets[phase]),
                "members_per_room": args.members if clients else 0, "window": args.window, **row,
                "span_s": round(span, 3), "deliveries": deliveries,
                "expected_deliveries": delivered["expected_deliveries"] if delivered else 0,
                "complete": delivered["complete"] if delivered else True,
                "deliveries_per_s": round(deliveries / span, 1),
                "delivery_ms": delivered["lat_ms"] if delivered else None,
                "out_of_order": delivered["out_of_order"] if delivered else 0,
                "unexpected_closes": delivered["unexpected_closes"] if delivered else 0,
                "gap_reads": None if gaps != gaps else int(gaps),
                **redis_figures(nodes, roles, r0, r1, c0, c1, span, row["published"]),
                "server_cpu_pct": round(server_s * 100 / span, 1),
                "server_us_per_delivery": round(server_s * 1e6 / deliveries, 1) if deliveries else None,
                **{("server_redis_cpu_pct" if k == "server_cpu_pct" else k): v
                   for k, v in cpu_split(p0, p1, span, args.tree_pid, spinners).items()},
                "keep_awake": bool(spinners),
                "rep": args.rep, "ts": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, separators=(",", ":")), flush=True)
    finally:
        for clients in (spread, hot):
            await asyncio.to_thread(clients.close)
        emitter.close()
        if state["topology"] == "cluster":
            emitter.client.close()
        nodes.close()


def summarize(path: str) -> None:
    """A markdown table of the `cluster` rows of ``path`` (medians over repetitions; ⚠ marks a
    cell with errors, missing or out-of-order deliveries), then each topology's ceilings."""
    rows, by = rows_by(path, "cluster", "topology")
    print("| topology | phase | publishes/s | deliveries/s | delivery p50 / p99 ms | Redis CPU µs per publish: "
          "masters / replicas | masters' shares | busiest master, % of a core | server CPU µs per delivery "
          "(server %) | load generator CPU % | others' CPU % |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for topology in ("single", "cluster"):
        for phase in PHASES:
            cell = by.get((topology, phase))
            if not cell:
                continue
            bad = any(x["errors"] or not x["complete"] or x["out_of_order"] for x in cell)
            shares = " / ".join(f"{s:.2f}" for s in cell[0]["master_shares"] or [])
            print(f"| {topology}{' ⚠' if bad else ''} | {phase} | {med(cell, 'publishes_per_s'):.0f} | "
                  f"{med(cell, 'deliveries_per_s'):.0f} | "
                  f"{med(cell, 'delivery_ms', 'p50')} / {med(cell, 'delivery_ms', 'p99')} | "
                  f"{med(cell, 'redis_us_per_publish')} / {med(cell, 'replica_us_per_publish')} | {shares} | "
                  f"{med(cell, 'busiest_master_cpu_pct')} | {med(cell, 'server_us_per_delivery')} "
                  f"({med(cell, 'server_cpu_pct')}) | {med(cell, 'client_cpu_pct')} | {med(cell, 'other_procs_cpu_pct')} |")
    if len({r["rep"] for r in rows}) > 1:
        print(f"(medians of {len({r['rep'] for r in rows})} repetitions)")
    if any(r.get("keep_awake") for r in rows):
        print("(--keep-awake: idle-time spinners kept both cores from going idle)")
    for topology in ("single", "cluster"):
        spread, nosub = by.get((topology, "spread")), by.get((topology, "nosub"))
        if spread and nosub:
            us, bare, srv = (med(spread, "redis_us_per_publish"), med(nosub, "redis_us_per_publish"),
                             med(spread, "server_us_per_delivery"))
            if all(isinstance(x, float) and x > 0 for x in (us, bare, srv)):
                print(f"{topology}: one master core ≈ {1e6 / us:,.0f} publishes/s ({us} µs each with the server "
                      f"subscribed; {bare} µs without); one server core ≈ {1e6 / srv:,.0f} deliveries/s ({srv} µs each)")


def main(argv: list[str]) -> None:
    if argv[:1] == ["summarize"]:
        summarize(argv[1])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--state", required=True, help="bench/with_topology.py's state file (Redis ports, server pid)")
    p.add_argument("--port", type=int, required=True, help="the server's port")
    p.add_argument("--rooms", type=int, default=30, help="rooms of the spread and nosub phases")
    p.add_argument("--members", type=int, default=10, help="clients per room (spread rooms and the hot room)")
    p.add_argument("--count", type=int, default=6000, help="publications per phase (rounded to a multiple of --rooms)")
    p.add_argument("--window", type=int, default=8, help="publishing threads")
    p.add_argument("--idle", type=float, default=3.0, help="seconds of the idle CPU reading")
    p.add_argument("--tree-pid", type=int, default=0, help="bench/with_topology.py's pid: server + Redis CPU")
    p.add_argument("--spinners", default="", help="pids of bench/cluster.sh's --keep-awake loops (not counted)")
    p.add_argument("--rep", type=int, default=1)
    p.add_argument("--node", default="node")
    asyncio.run(measure(p.parse_args(argv)))


if __name__ == "__main__":
    main(sys.argv[1:])
