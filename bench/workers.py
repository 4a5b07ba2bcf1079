"""``[server] workers``: CPU per delivery with 1 worker process against 2, in the same run (README "Workers").

Starts a private redis-server, then for each round and each worker count (1, 2, alternating) the real daemon
(``twistd wsgw`` with ``[server] workers = K``), and runs bench/loadgen.py against it: a connect storm, the
flood (every client receives every event) and the floor (events nobody receives). CPU is read from /proc for
the supervisor and every worker, summed. Prints one Markdown table (ranges over the rounds) and a JSON line.

    .venv/bin/python bench/workers.py [--n 1000] [--rounds 3] [--counts 1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import run  # noqa: E402 - bench/run.py, the benchmark's own helpers


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def start(workdir: str, redis_port: int, prefix: str, count: int, tag: str) -> tuple[run.Proc, int, list[int]]:
    port = run.free_port()
    ini = os.path.join(workdir, f"gateway{tag}.ini")
    text = run.gateway_ini(port, redis_port, prefix, pacing=False)
    with open(ini, "w") as f:
        f.write(text.replace("shutdown_timeout = 5\n", f"shutdown_timeout = 5\nworkers = {count}\n"))
    twistd = os.path.join(os.path.dirname(run.PY), "twistd")
    logf = os.path.join(workdir, f"gateway{tag}.log")
    proc = run.Proc("gateway", [twistd, "--nodaemon", "--pidfile=", f"--logfile={logf}.twistd", "wsgw",
                                "--config", ini], logf, env={"WSGW_HMAC_SECRET": run.SECRET})
    try:
        run.wait_port(port, proc.proc)
        run.wait_subscribed(redis_port, f"{prefix}.{run.TOPICS['tree']}", count, timeout=60)
        workers = children(proc.pid) if count > 1 else []
        assert len(workers) == (count if count > 1 else 0), workers
    except Exception:
        proc.stop()
        raise
    return proc, port, [proc.pid, *workers]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--counts", default="1,2")
    p.add_argument("--duration", type=float, default=5.0)
    args = p.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    run.raise_nofile()
    results: dict[int, list[dict[str, Any]]] = {c: [] for c in counts}
    phase = dict(duration=args.duration, selective_duration=3.0)
    with tempfile.TemporaryDirectory(prefix="wsgw-bench-workers-") as workdir:
        redis_port = run.free_port()
        redis = run.Proc("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--maxclients", "1000"], os.path.join(workdir, "redis.log"))
        try:
            run.wait_port(redis_port, redis.proc)
            for r in range(args.rounds):
                for count in counts:
                    prefix = f"benchw{r}x{count}"
                    proc, port, pids = start(workdir, redis_port, prefix, count, f"-{r}-{count}")
                    try:
                        run.log(f"round {r + 1}: workers = {count} (pids {pids}): storm, flood, floor")
                        out = run.run_loader("gateway", [port], pids, redis_port, prefix, args.n, "storm,flood,floor",
                                             phase, 400)
                    finally:
                        proc.stop(timeout=30)
                    results[count].append(out)
        finally:
            redis.stop()
    rows = [("flood: deliveries/s", ("flood", "deliveries_per_s")),
            ("flood: CPU µs per delivery (all processes)", ("flood", "cpu_us_per_delivery")),
            ("flood: lost / duplicated", ("flood", "lost")),
            ("floor (no recipient): CPU µs per event", ("floor", "cpu_us_per_event")),
            ("storm: CPU s for N connect + subscribe", ("storm", "server_cpu_s")),
            ("storm: failed", ("storm", "failed"))]
    print(f"\n| N = {args.n:,}, {args.rounds} rounds | " + " | ".join(f"workers = {c}" for c in counts) + " |")
    print("|---|" + "---:|" * len(counts))
    for label, path in rows:
        cells = []
        for c in counts:
            values = [run.get(o, *path) for o in results[c]]
            if path[1] == "lost":
                values = [f"{run.get(o, 'flood', 'lost')} / {run.get(o, 'flood', 'duplicates')}" for o in results[c]]
                cells.append(", ".join(sorted(set(values))))
                continue
            nums = [v for v in values if isinstance(v, (int, float))]
            cells.append(f"{min(nums):g}–{max(nums):g}" if nums else "?")
        print(f"| {label} | " + " | ".join(cells) + " |")
    print(json.dumps({"n": args.n, "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                      "results": {str(c): results[c] for c in counts}}, default=str))


if __name__ == "__main__":
    main()
