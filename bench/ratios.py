"""One JSON line of ratios (ours / Node socket.io, medians per scenario) from a results file."""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict

METRICS = {"echo": "acks_per_s", "polling": "acks_per_s", "fanout": "deliveries_per_s", "conns": "conns_per_s"}


def main(path: str) -> None:
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    memory: dict[str, list[float]] = defaultdict(list)
    for line in open(path):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if "error" in row:
            continue
        scenario = row.get("scenario", "")
        variant = row.get("rate") if scenario == "fanout" else row.get("conns_target") if scenario == "conns" else None
        label = scenario + (f"@{variant}" if variant is not None else "")
        field = METRICS.get(scenario)
        if field and isinstance(row.get(field), (int, float)):
            values[(row["target"], label)].append(row[field])
        if scenario == "conns" and isinstance(row.get("kib_per_conn"), (int, float)):
            memory[row["target"]].append(row["kib_per_conn"])
    ratios = {}
    for (target, label), vs in values.items():
        ref = values.get(("node-socketio", label))
        if target != "node-socketio" and ref:
            ratios[label] = round(statistics.median(vs) / statistics.median(ref), 3)
    if memory.get("realtime-server") and memory.get("node-socketio"):
        ratios["kib_per_conn"] = round(statistics.median(memory["realtime-server"]) /
                                       statistics.median(memory["node-socketio"]), 3)
    print(json.dumps({"ratios_vs_node_socketio": ratios}))


if __name__ == "__main__":
    main(sys.argv[1])
