"""Memory and GC pauses of the gateway (bench/RESULTS.md, "Memory and GC"): a private redis-server, the gateway
under twistd (bench/run.py's start_server: the real daemon and config) with bench/gc_hook loaded, the load
generator at N; prints the idle KB per socket and every collection's pause by generation (wall and CPU).

    python bench/gc_pauses.py 10000 storm,selective TAG        # from the repository root
    MEMGC_FREEZE=no python bench/gc_pauses.py ...              # the daemon with [server] gc_freeze = no
Results are printed as JSON and appended to $MEMGC_RESULTS (default /tmp/gc_pauses.jsonl).
"""
import collections
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run  # noqa: E402 - bench/run.py, found through the path set above

n, scenarios, tag = int(sys.argv[1]), sys.argv[2], sys.argv[3]
workdir = tempfile.mkdtemp(prefix="memgc-")
log = os.path.join(workdir, "gc.log")
os.environ["PYTHONPATH"] = os.path.join(HERE, "gc_hook")
os.environ["MEMGC_LOG"] = log
if os.environ.get("MEMGC_FREEZE") == "no":
    _orig = run.gateway_ini
    run.gateway_ini = lambda *a, **k: _orig(*a, **k).replace("[server]\n", "[server]\ngc_freeze = no\n")
redis, redis_port = run.private_redis(workdir, "--maxclients", "1000")
try:
    proc, port = run.start_server("gateway", workdir, redis_port, "m", pacing=len(sys.argv) > 4)
    try:
        res = run.run_loader("gateway", [port], [proc.pid], redis_port, "m", n, scenarios, {}, 900)
    finally:
        proc.stop()
finally:
    redis.stop()
pauses = collections.defaultdict(list)
cpus = collections.defaultdict(list)
for line in open(log):
    p = line.split()
    if len(p) >= 3 and p[1].startswith("gen"):
        pauses[p[1]].append(float(p[2]))
        if len(p) > 3 and p[3].startswith("cpu="):
            cpus[p[1]].append(float(p[3][4:]))
summary = {g: {"count": len(v), "max_ms": max(v), "total_ms": round(sum(v)), "over50": sum(x > 50 for x in v),
               "cpu_max_ms": max(cpus[g] or [0]), "cpu_over50": sum(x > 50 for x in cpus[g]), "p99_ms": sorted(v)[int(len(v) * 0.99)]}
           for g, v in sorted(pauses.items())}
out = {"tag": tag, "n": n, "idle": res.get("idle"), "storm": res.get("storm"), "gc": summary,
       "selective": {k: {kk: vv for kk, vv in v.items() if "p99" in kk or "p50" in kk or "cpu" in kk} for k, v in res.items() if k.startswith("selective") and isinstance(v, dict)},
       "workdir": workdir}
print(json.dumps(out, indent=1))
with open(os.environ.get("MEMGC_RESULTS", "/tmp/gc_pauses.jsonl"), "a") as f:
    f.write(json.dumps({**out, "raw": res}) + "\n")
