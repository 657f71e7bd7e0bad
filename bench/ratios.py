"""The ratios of a results file: ours ÷ Node socket.io per scenario, embedded and with Redis, and
Redis ÷ embedded; a markdown table, a table of the chat scenario, then one JSON line.

usage: python3 bench/ratios.py RESULTS.jsonl [--max-interference 5]

Medians over repetitions. As the shared harness's summarize.py does, rows whose measurement
window saw other processes use more than --max-interference % of one core are left out when at
least two cleaner rows are left for that cell; a cell that lacked two clean rows is marked `*`.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from typing import Any

NODE = "node-socketio"
# harness target name of each mode of this server (bench/run.sh --modes)
MODES = {"embedded": "realtime-server", "redis": "realtime-server+redis"}
# (scenario, metric, label, higher is better)
METRICS = [
    ("echo", "acks_per_s", "acks/s", True),
    ("polling", "acks_per_s", "acks/s", True),
    ("fanout", "deliveries_per_s", "deliveries/s", True),
    # At a fixed rate both deliver everything: the server CPU it takes is the measure.
    ("fanout", "server_cpu_pct", "server CPU % (lower is better)", False),
    ("conns", "conns_per_s", "conns/s", True),
    ("conns", "kib_per_conn", "KiB/conn (lower is better)", False),
    ("chat", "acks_per_s", "acked messages/s", True),
    ("chat", "deliveries_per_s", "deliveries/s", True),
    ("echo-id", "acks_per_s", "acks/s, an eventId in every event", True),
    ("echo-plain", "acks_per_s", "acks/s, the same load without IDs (ours only)", True),
]
CHAT_COLUMNS = [("acks_per_s", "acked msg/s"), ("deliveries_per_s", "deliveries/s"),
                ("ack_lat_ms.p50", "ack p50 ms"), ("ack_lat_ms.p99", "ack p99 ms"),
                ("lat_ms.p50", "delivery p50 ms"), ("lat_ms.p99", "delivery p99 ms"),
                ("server_cpu_pct", "srv CPU%"), ("client_cpu_pct", "cli CPU%")]


def variant(row: dict[str, Any]) -> str:
    """The cell a row belongs to within its scenario: fan-out rate, connection stage, chat senders."""
    scenario = row.get("scenario")
    if scenario == "fanout":
        return str(row.get("rate"))
    if scenario == "conns":
        return str(row.get("conns_target"))
    if scenario == "chat":
        return str(row.get("variant"))
    return ""


def get(row: dict[str, Any], path: str) -> Any:
    """``path`` like ``lat_ms.p99`` in ``row``, or None."""
    for key in path.split("."):
        if not isinstance(row, dict):
            return None
        row = row.get(key)
    return row


def load(path: str) -> tuple[dict[tuple[str, str, str], list[dict]], list[dict]]:
    """Rows grouped by (target, scenario, variant), and the error rows."""
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    errors = []
    for line in open(path):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if "error" in row:
            errors.append(row)
        else:
            groups[(row.get("target", ""), row.get("scenario", ""), variant(row))].append(row)
    return groups, errors


def median(rows: list[dict], path: str, max_interference: float) -> tuple[float | None, bool]:
    """The median of ``path`` over the clean rows (all rows when fewer than two are clean), and
    whether it came from clean rows."""
    clean = [r for r in rows if (get(r, "interference.other_procs_cpu_pct") or 0) <= max_interference]
    used = clean if len(clean) >= 2 else rows
    values = [v for v in (get(r, path) for r in used) if isinstance(v, (int, float))]
    return (statistics.median(values) if values else None), len(clean) >= 2


def fmt(value: float | None, clean: bool = True) -> str:
    if value is None:
        return "–"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return text + ("" if clean else "*")


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def show(value: float | None) -> str:
    return f"{value:.2f}×" if value is not None else "–"


def cell_order(cell: tuple[str, str]) -> tuple[int, float, str]:
    """Scenarios in METRICS order; variants by their leading number (rate, stage, senders)."""
    scenarios = [m[0] for m in METRICS]
    digits = "".join(ch for ch in cell[1].split("x")[0] if ch.isdigit() or ch == ".")
    try:
        number = float(digits)
    except ValueError:
        number = float("inf")
    return (scenarios.index(cell[0]) if cell[0] in scenarios else 99, number, cell[1])


def report(path: str, max_interference: float) -> None:
    groups, errors = load(path)
    cells = sorted({(s, v) for (_, s, v) in groups}, key=cell_order)
    lines = ["| scenario | metric | Node | embedded | ÷ Node | Redis | ÷ Node | Redis ÷ embedded |",
             "|---|---|---|---|---|---|---|---|"]
    ratios: dict[str, dict[str, float]] = {"ratios_vs_node_socketio": {}, "ratios_vs_node_socketio_redis": {},
                                           "redis_vs_embedded": {}}
    for scenario, var in cells:
        for scen, metric, label, _higher in METRICS:
            if scen != scenario:
                continue
            node, node_clean = median(groups.get((NODE, scenario, var), []), metric, max_interference)
            emb, emb_clean = median(groups.get((MODES["embedded"], scenario, var), []), metric, max_interference)
            red, red_clean = median(groups.get((MODES["redis"], scenario, var), []), metric, max_interference)
            if node is None and emb is None and red is None:
                continue
            key = scenario + (f"@{var}" if var else "") + (f":{metric}" if scenario in ("chat", "conns", "fanout") else "")
            for name, value in (("ratios_vs_node_socketio", ratio(emb, node)),
                                ("ratios_vs_node_socketio_redis", ratio(red, node)),
                                ("redis_vs_embedded", ratio(red, emb))):
                if value is not None:
                    ratios[name][key] = value
            lines.append(f"| {scenario}{' ' + var if var else ''} | {label} | {fmt(node, node_clean)} | "
                         f"{fmt(emb, emb_clean)} | {show(ratio(emb, node))} | {fmt(red, red_clean)} | "
                         f"{show(ratio(red, node))} | {show(ratio(red, emb))} |")
    print("\n".join(lines))
    for mode, target in MODES.items():
        with_ids, _ = median(groups.get((target, "echo-id", ""), []), "acks_per_s", max_interference)
        plain, _ = median(groups.get((target, "echo-plain", ""), []), "acks_per_s", max_interference)
        if with_ids and plain:
            ratios.setdefault("event_ids_vs_none", {})[mode] = ratio(with_ids, plain)
            print(f"\nwhat applying each event once costs ({mode}): echo with eventId ÷ without = "
                  f"{show(ratio(with_ids, plain))}")
    chat = sorted(k for k in groups if k[1] == "chat")
    if chat:
        print("\nchat (Node: /bench `fanout` with ack; ours: /chat `message` with ack), medians:\n")
        print("| target | senders×members | " + " | ".join(c[1] for c in CHAT_COLUMNS) + " |")
        print("|---|---|" + "---|" * len(CHAT_COLUMNS))
        for target, _, var in sorted(chat, key=lambda k: (cell_order(("chat", k[2])), k[0] != NODE, k[0])):
            values = [fmt(*median(groups[(target, "chat", var)], path, max_interference)) for path, _ in CHAT_COLUMNS]
            print(f"| {target} | {var} | " + " | ".join(values) + " |")
    for row in errors:
        print(f"\nerror: {row.get('target')} {row.get('scenario')} rep {row.get('rep')}: {str(row.get('error'))[:300]}")
    print()
    print(json.dumps(ratios))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("results", help="a bench/results/*.jsonl file")
    parser.add_argument("--max-interference", type=float, default=5.0,
                        help="%% of one core used by other processes above which a row is left out "
                             "when two cleaner rows remain")
    args = parser.parse_args()
    report(args.results, args.max_interference)


if __name__ == "__main__":
    main()
