"""Per-event cost (issue 13, goal 2): the selective and floor phases only, wsgw, Node and Go in one run.

    python bench/per_event.py --n 1000              # one recipient per event, and the floor
    python bench/per_event.py --n 10000 --rounds 2  # 10 recipients per event (the 1,000-workspace phase)
    python bench/per_event.py --n 10000 --flood --window 16   # goal 1: the broadcast flood, 16 events in flight

For each round, each server in turn (the gateway as ``make bench`` runs it,
pacing off; Node and Go in their selective mode) is started on 127.0.0.1
against one private redis-server, and the load generator runs
``storm,selective,floor`` against it (``bench/loadgen.py``: 1,000 events/s,
10 per 10-ms tick, for ``--duration`` seconds a phase). Prints, per round,
server CPU µs per event of each phase and the ratios wsgw / Node and
wsgw / Go, then the range over rounds. Every process is stopped by its pid.

``--flood`` runs ``storm,flood`` instead (every server in broadcast mode: one
workspace, each event to all N clients) with ``--window`` events in flight
(``make bench`` keeps 8,000 / N, at least 2: 2 at N = 10,000, so that a read
from Redis rarely holds two events and batching cannot show; with more in
flight, the events published while the server writes one arrive together).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run  # noqa: E402

PHASES = (("selective", "selective 1,000 ws"), ("selective_one", "selective, one recipient"),
          ("floor", "no recipient (floor)"))


def one(kind: str, workdir: str, redis_port: int, n: int, duration: float, tag: str,
        reactor: str, window: int, groups: int = 1000) -> dict[str, Any]:
    prefix = f"pe{tag}{kind}"
    mode = "selective" if kind in run.SELECTIVE_BASELINES and not window else "broadcast"
    proc, port = run.start_server(kind, workdir, redis_port, prefix, tag=f"-{tag}", mode=mode,
                                  reactor=reactor if kind == "gateway" else "")
    try:
        if window:
            return run.run_loader(kind, [port], [proc.pid], redis_port, prefix, n, "storm,flood",
                                  dict(duration=duration, window=window), 600)
        return run.run_loader(kind, [port], [proc.pid], redis_port, prefix, n, "storm,selective,floor",
                              dict(selective_duration=duration, selective_groups=groups), 300)
    finally:
        proc.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--duration", type=float, default=3.0, help="seconds per phase")
    p.add_argument("--servers", default="gateway,node,go")
    p.add_argument("--reactor", default="", help="twistd reactor for the gateway")
    p.add_argument("--json", default="", help="write every round's raw results here")
    p.add_argument("--flood", action="store_true", help="the broadcast flood (storm,flood) instead")
    p.add_argument("--window", type=int, default=0, help="--flood: events in flight (default 8,000 / N, >= 2)")
    p.add_argument("--selective-groups", type=int, default=1000, help="workspaces of the first selective phase: "
                   "N / groups recipients per event (100 at N = 1,000: issue 13's 10 recipients)")
    args = p.parse_args()
    global PHASES
    PHASES = (("selective", f"selective {args.selective_groups:,} ws"),) + PHASES[1:]
    run.raise_nofile()
    servers = args.servers.split(",")
    window = (args.window or max(2, 8000 // args.n)) if args.flood else 0
    if "go" in servers and not os.access(run.GO_BIN, os.X_OK):
        sys.exit("per_event: the Go baseline is not built (make bench-deps)")
    rounds: list[dict[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="wsgw-per-event-") as workdir:
        redis, redis_port = run.private_redis(workdir, "--maxclients", "1000")
        try:
            for i in range(args.rounds):
                results = {}
                for kind in servers:
                    run.log(f"round {i + 1}: N={args.n} {kind}")
                    results[kind] = one(kind, workdir, redis_port, args.n, args.duration, f"{args.n}r{i}",
                                        args.reactor, window, args.selective_groups)
                rounds.append(results)
                print((render_flood if window else render)([results], args.n, f"round {i + 1}"), flush=True)
        finally:
            redis.stop()
    print((render_flood if window else render)(rounds, args.n, "all rounds"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n": args.n, "window": window, "rounds": rounds, "at": time.strftime("%Y-%m-%d %H:%M")}, f,
                      indent=1)


FLOOD = (("cpu_us_per_delivery", "server CPU µs/delivery"), ("deliveries_per_cpu_s", "deliveries per server CPU-s"),
         ("deliveries_per_s", "deliveries/s"), ("p99_ms", "latency p99 ms"), ("lost_dup", "lost / duplicated"))


def render_flood(rounds: list[dict[str, dict[str, Any]]], n: int, title: str) -> str:
    servers = list(rounds[0])
    for r in rounds:
        for kind in servers:
            fl = r[kind]["flood"]
            fl["lost_dup"] = f"{fl['lost']} / {fl['duplicates']}"
    lines = [f"\nN = {n:,}, flood, {title}\n", "| figure | " + " | ".join(servers) + " | wsgw / node | wsgw / go |",
             "|---|" + "---:|" * (len(servers) + 2)]
    for key, label in FLOOD:
        cells = [" / ".join(str(r[kind]["flood"].get(key)) for r in rounds) for kind in servers]
        ratios = []
        for base in ("node", "go"):
            if key == "deliveries_per_cpu_s" and "gateway" in servers and base in servers:
                ratios.append(" / ".join(f"{r['gateway']['flood'][key] / r[base]['flood'][key]:.2f}×" for r in rounds
                                         if r[base]["flood"].get(key) and r["gateway"]["flood"].get(key)))
            else:
                ratios.append("")
        lines.append(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


def render(rounds: list[dict[str, dict[str, Any]]], n: int, title: str) -> str:
    servers = list(rounds[0])
    lines = [f"\nN = {n:,}, {title}: server CPU µs per event (recipients per event)\n",
             "| phase | " + " | ".join(servers) + " | wsgw / node | wsgw / go |", "|---|" + "---:|" * (len(servers) + 2)]
    for key, label in PHASES:
        cells = []
        for kind in servers:
            vals = [run.get(r[kind], key, "cpu_us_per_event") for r in rounds]
            rec = run.get(rounds[0][kind], key, "recipients_per_event")
            cells.append(" / ".join(f"{v}" for v in vals) + (f" ({rec})" if rec is not None else ""))
        ratios = []
        for base in ("node", "go"):
            if "gateway" in servers and base in servers:
                rs = [run.get(r["gateway"], key, "cpu_us_per_event") / run.get(r[base], key, "cpu_us_per_event")
                      for r in rounds if run.get(r[base], key, "cpu_us_per_event")]
                ratios.append(" / ".join(f"{x:.2f}" for x in rs))
            else:
                ratios.append("")
        lines.append(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    bad = [f"{kind} {key}" for r in rounds for kind in servers for key in ("selective", "selective_one")
           if run.get(r[kind], key, "lost") or run.get(r[kind], key, "duplicates")]
    bad += [f"{kind} floor stray" for r in rounds for kind in servers if run.get(r[kind], "floor", "stray_deliveries")]
    lines.append("\nlost / duplicated / stray: " + (", ".join(bad) if bad else "none"))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
