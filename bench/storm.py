"""The connect storm alone, every server in one run (issue 13 goal 3; bench/RESULTS.md "Connect path").

    python bench/storm.py                         # N = 1,000 and 10,000, 2 rounds, all four servers
    python bench/storm.py --n 1000 --rounds 3 --servers gateway,go

Each round starts each server in turn (the gateway as ``make bench`` runs it,
Node and Go in selective mode, i.e. indexing sessions by workspace root as the
gateway does, Autobahn bare), has ``bench/loadgen.py`` connect and subscribe N
clients at once (each with its own HS256 token) and prints the server's CPU
per connect + subscribe in ms (from /proc, the loader's ``server_cpu_s`` / N)
and the gateway's ratio to each baseline in that round. Everything listens on
127.0.0.1 and is stopped by its pid; Redis is a private redis-server.
WSGW_BENCH_HANDSHAKE_TIMEOUT=1 gives the gateway a 1 s ``[server]
handshake_timeout`` (10 s by default), to see the storm refusals of
bench/RESULTS.md "Storm refusals at 10,000" on an unloaded machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, action="append", help="connection counts (default 1000 and 10000)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--servers", default="gateway,autobahn,node,go")
    args = p.parse_args()
    run.raise_nofile()
    servers = args.servers.split(",")
    if "go" in servers and not os.access(run.GO_BIN, os.X_OK):
        run.log("the Go baseline is not built: left out")
        servers.remove("go")
    lines = []
    with tempfile.TemporaryDirectory(prefix="wsgw-storm-") as workdir:
        redis, redis_port = run.private_redis(workdir)
        try:
            for n in args.n or [1000, 10000]:
                for rnd in range(args.rounds):
                    ms: dict[str, float] = {}
                    for kind in servers:
                        prefix = f"storm{n}{kind}{rnd}"
                        mode = "selective" if kind in run.SELECTIVE_BASELINES else "broadcast"
                        proc, port = run.start_server(kind, workdir, redis_port, prefix, tag=f"-{n}-{rnd}",
                                                      mode=mode)
                        try:
                            r = run.run_loader(kind, [port], [proc.pid], redis_port, prefix, n, "storm", {}, 300)
                        finally:
                            proc.stop()
                        s = r["storm"]
                        if s["failed"]:
                            run.log(f"{kind} N={n}: {s['failed']} failed: {s['errors']}")
                        ms[kind] = 1000 * s["server_cpu_s"] / max(1, s["subscribed"])
                    gw = ms.get("gateway")
                    cells = [f"{k} {v:.3f}" for k, v in ms.items()]
                    if gw:
                        cells += [f"gateway/{k} {gw / v:.2f}x" for k, v in ms.items() if k != "gateway" and v]
                    line = f"N={n} round {rnd + 1}: ms per connect+subscribe: " + ", ".join(cells)
                    run.log(line)
                    lines.append(line)
        finally:
            redis.stop()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
