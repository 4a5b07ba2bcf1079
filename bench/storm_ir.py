"""The gateway's user-space instructions per connect + subscribe in a storm, under callgrind (bench/RESULTS.md
"Connect path", part 3): a figure the shared machine's load does not move, for A/B comparisons of code.

    python bench/storm_ir.py --n 1000 --rounds 2 before=/tmp/main-tree after=/work/wt-x autobahn

Each ``name=path`` is a tree holding a ``wsgw`` package, run as a wheel ships it: a copy with its ``setup.py``
``COMPILED`` modules built by mypyc (``run.compiled_tree``; ``git archive main wsgw setup.py setup.cfg
pyproject.toml README.md`` makes such a tree of a branch; ``WSGW_BENCH_PURE=1``: the tree's pure Python) (``autobahn`` alone: the bare Autobahn + PyJWT baseline,
``bench/baselines/autobahn_broadcast.py``, as ``bench/storm.py`` runs it; ``floor``: ``bench/baselines/
twisted_floor.py``, Twisted + PyJWT with a minimal handshake and frame, ``floor-nojwt`` without PyJWT,
``floor-wsgwjwt`` with wsgw's savings in PyJWT), put first on ``PYTHONPATH`` of a gateway started as
``bench/storm.py`` starts it (``make bench``'s configuration), but under ``valgrind --tool=callgrind`` with
instrumentation off; it is switched on (``callgrind_control -i on``) once the gateway listens and has subscribed
to Redis, the loader (``bench/loadgen.py --scenarios storm``) connects and subscribes N clients at once, then
instrumentation is switched off and the count dumped. The trees run alternately, round after round. Printed: the
instructions (callgrind ``Ir``) per subscribed client, in millions; they include what the daemon executes while
the loader prepares its tokens (its idle reactor: a few %), not the kernel's work for its syscalls. Under callgrind
the daemon runs ~20x slower: N = 1,000 takes ~20 s a storm, N above ~2,500 outlasts the loader's 60 s per client.
Needs ``valgrind`` (``callgrind_control``) and ``redis-server``; everything listens on 127.0.0.1, stopped by pid.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run  # noqa: E402

BASELINES = ("autobahn", "floor", "floor-nojwt", "floor-wsgwjwt")


def instructions(dump: str) -> int:
    """The total ``Ir`` of the callgrind dumps starting with ``dump``."""
    total = 0
    for path in glob.glob(dump + "*"):
        with open(path, errors="replace") as f:
            for line in f:
                if line.startswith(("summary:", "totals:")):
                    total = max(total, int(line.split()[1]))
    return total


def one_storm(workdir: str, redis_port: int, name: str, tree: str, n: int, rnd: int,
              floor: dict[str, Any] | None = None) -> tuple[float, int]:
    prefix, port = f"ir{name}{rnd}", run.free_port()
    dump = os.path.join(workdir, f"{prefix}.callgrind")
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={dump}"]
    channels = [f"{prefix}.{run.TOPICS[c]}" for c in run.CHANNELS]
    env = {"WSGW_HMAC_SECRET": run.SECRET}
    if tree:
        ini = os.path.join(workdir, f"{prefix}.ini")
        with open(ini, "w") as f:
            f.write(run.gateway_ini(port, redis_port, prefix, pacing=False))
        twistd = os.path.join(os.path.dirname(run.PY), "twistd")
        command = [twistd, "--nodaemon", "--pidfile=", f"--logfile={dump}.twistd", "wsgw", "--config", ini]
        env["PYTHONPATH"] = run.compiled_tree(workdir, tree) or tree
    elif name.startswith("floor"):
        command = [run.PY, os.path.join(run.HERE, "baselines", "twisted_floor.py"), "--port", str(port)]
        command += {"floor-nojwt": ["--no-jwt"], "floor-wsgwjwt": ["--wsgw-jwt"]}.get(name, [])
    else:
        command = [run.PY, os.path.join(run.HERE, "baselines", "autobahn_broadcast.py"), "--port", str(port),
                   "--redis-port", str(redis_port)]
        for channel in channels:
            command += ["--channel", channel]
    proc = run.Proc(name, valgrind + command, os.path.join(workdir, f"{prefix}.log"), env=env)
    try:
        run.wait_port(port, proc.proc, timeout=600)
        if not name.startswith("floor"):  # (the floor has no Redis)
            run.wait_subscribed(redis_port, channels[0], 1, timeout=600)
        time.sleep(2)  # (start-up's last timers)
        kind = "gateway" if tree else "autobahn"
        if floor is None:
            subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], capture_output=True, check=True)
            result = run.run_loader(kind, [port], [proc.pid], redis_port, prefix, n, "storm", {}, 1200)
            subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], capture_output=True, check=True)
        else:  # the loader switches instrumentation on and off around the floor's events
            hook = f"callgrind_control -i {{state}} {proc.pid}"
            result = run.run_loader(kind, [port], [proc.pid], redis_port, prefix, n, "storm,floor",
                                    dict(floor, phase_hook=hook), 1200)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True, check=True)
    finally:
        proc.stop(timeout=60)
    if floor is not None:
        events = result["floor"]["events"]
        return instructions(dump) / max(1, events) / 1e3, events
    subscribed = result["storm"]["subscribed"]
    return instructions(dump) / max(1, subscribed) / 1e6, subscribed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--keep", default="", help="a directory to copy each storm's callgrind dump to "
                   "(for callgrind_annotate)")
    p.add_argument("--scenario", default="storm", choices=["storm", "floor"],
                   help="floor: instructions per event nobody receives (after a storm of N; k instructions)")
    p.add_argument("--rate", type=float, default=100.0, help="floor: events a second (100: one per 10-ms tick, "
                   "each read alone)")
    p.add_argument("--duration", type=float, default=10.0, help="floor: seconds of events")
    p.add_argument("trees", nargs="+", help="name=path of a tree holding a wsgw package, or a baseline's name")
    args = p.parse_args()
    run.raise_nofile()
    trees = [(t, "") if t in BASELINES else tuple(t.split("=", 1)) for t in args.trees]
    figures: dict[str, list[float]] = {name: [] for name, _ in trees}
    unit = "k instructions per event" if args.scenario == "floor" else "M instructions per connect+subscribe"
    with tempfile.TemporaryDirectory(prefix="wsgw-storm-ir-") as workdir:
        redis, redis_port = run.private_redis(workdir)
        try:
            for rnd in range(args.rounds):
                for name, tree in trees if rnd % 2 == 0 else trees[::-1]:
                    floor = (dict(selective_rate=args.rate, selective_duration=args.duration)
                             if args.scenario == "floor" else None)
                    m, subscribed = one_storm(workdir, redis_port, name, tree, args.n, rnd, floor)
                    if args.keep:
                        os.makedirs(args.keep, exist_ok=True)
                        for path in glob.glob(os.path.join(workdir, f"ir{name}{rnd}.callgrind*")):
                            if not path.endswith((".twistd", ".log")):
                                shutil.copy(path, args.keep)
                    figures[name].append(m)
                    run.log(f"N={args.n} round {rnd + 1} {name}: {m:.3f} {unit} ({subscribed} "
                            f"{'events' if floor else 'subscribed'})")
        finally:
            redis.stop()
    for name, values in figures.items():
        print(f"{name}: " + " / ".join(f"{v:.3f}" for v in values) + f" {unit}")


if __name__ == "__main__":
    main()
