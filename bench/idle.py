"""Idle cost: the server CPU N subscribed, silent clients cost per second (keepalive pings), every server in one run.

    python bench/idle.py --n 10000 --hold 70                          # the gateway's 30-s pings, Node, Go
    python bench/idle.py --n 10000 --hold 40 --ping-interval 5 --servers gateway   # CPU per ping and its pong

Each server in turn (the gateway as ``make bench`` runs it, Node and Go in
selective mode) is started on 127.0.0.1 against one private redis-server;
``bench/loadgen.py`` connects and subscribes N clients (``storm``), which then
stay open and silent for ``--hold`` seconds (``hold``; the loader's clients
answer pings). The server's CPU is read from /proc once a second; the figure is
its CPU over the hold from ``--settle`` seconds after the storm to one second
before the end: ms per second and, for the gateway, µs per ping (N /
``--ping-interval`` pings a second; PROTOCOL.md: every 30 s by default). That
CPU lands in any phase of ``bench/per_event.py`` it overlaps: at 1,000 events
a second, 1 ms/s of idle CPU is 1 µs per event (bench/RESULTS.md "Idle cost at
N = 10,000"). Node's ``ws`` baseline sends no ping; Go's pings every 54 s
(melody's default). ``--timeline`` prints the CPU of every second; ``--root`` runs another checkout's
gateway (e.g. main's, before a change) with this checkout's bench.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run  # noqa: E402


def cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one(kind: str, workdir: str, redis_port: int, args: argparse.Namespace, tag: str) -> tuple[float, list[str]]:
    """The server's CPU ms per second over the idle window, and its per-second timeline."""
    prefix = f"idle{tag}{kind}"
    mode = "selective" if kind in run.SELECTIVE_BASELINES else "broadcast"
    proc, port = run.start_server(kind, workdir, redis_port, prefix, tag=f"-{tag}", mode=mode)
    pid = proc.proc.pid
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.monotonic(), cpu_s(pid)))
            stop.wait(1.0)

    sampler = threading.Thread(target=sample)
    sampler.start()
    loader = [run.PY, os.path.join(run.HERE, "loadgen.py"), "--server", kind, "--redis-port", str(redis_port),
              "--prefix", prefix, "--n", str(args.n), "--scenarios", "storm,hold", "--hold", str(args.hold),
              "--port", str(port), "--server-pid", str(pid)]
    stormed = ended = 0.0
    try:
        lp = subprocess.Popen(loader, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=run.raise_nofile,
                              cwd=run.ROOT)
        assert lp.stderr is not None
        for line in lp.stderr:
            if b"storm done" in line:
                stormed = time.monotonic()
            elif b"hold done" in line:
                ended = time.monotonic()
        if lp.wait(args.hold + 300) != 0 or not (stormed and ended):
            raise RuntimeError(f"loadgen {kind} failed")
    finally:
        stop.set()
        sampler.join()
        proc.stop()
    a = min(samples, key=lambda s: abs(s[0] - (stormed + args.settle)))
    b = min(samples, key=lambda s: abs(s[0] - (ended - 1)))
    timeline = [f"{t - stormed:+.0f}s {1000 * (c - c0) / (t - t0):.0f}" for (t0, c0), (t, c) in zip(samples, samples[1:], strict=False)]
    return 1000 * (b[1] - a[1]) / (b[0] - a[0]), timeline


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--hold", type=float, default=70.0, help="seconds the clients stay open after the storm")
    p.add_argument("--settle", type=float, default=5.0, help="seconds after the storm before the window starts")
    p.add_argument("--ping-interval", type=float, default=30.0, help="the gateway's [websocket] ping_interval")
    p.add_argument("--servers", default="gateway,node,go")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--timeline", action="store_true")
    p.add_argument("--root", default="", help="the checkout whose wsgw the gateway runs (default: this one's)")
    args = p.parse_args()
    if args.root:
        run.ROOT = os.path.abspath(args.root)  # (run.compiled_tree builds the gateway from run.ROOT's wsgw)
    run.raise_nofile()
    os.environ["WSGW_BENCH_PING_INTERVAL"] = f"{args.ping_interval:g}"
    with tempfile.TemporaryDirectory(prefix="wsgw-idle-") as workdir:
        redis, redis_port = run.private_redis(workdir)
        try:
            for rnd in range(args.rounds):
                for kind in args.servers.split(","):
                    ms, timeline = one(kind, workdir, redis_port, args, f"{args.n}r{rnd}")
                    line = f"N={args.n} round {rnd + 1} {kind}: idle CPU {ms:.1f} ms/s"
                    if kind == "gateway":
                        line += f", {1000 * ms / (args.n / args.ping_interval):.1f} us per ping (every " \
                                f"{args.ping_interval:g} s)"
                    print(line, flush=True)
                    if args.timeline:
                        print("  " + ", ".join(timeline), flush=True)
        finally:
            redis.stop()


if __name__ == "__main__":
    main()
