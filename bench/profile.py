"""Profile one server under the broadcast flood (or the selective load) with py-spy (see bench/RESULTS.md).

    python bench/profile.py --server gateway --n 10000 --seconds 6 --out /tmp/gw.txt
    python bench/profile.py --scenario selective --n 10000 --seconds 6
    python bench/profile.py --scenario storm --n 10000 --seconds 20   # the connect storm itself
    python bench/profile.py --scenario floor --n 1000 --seconds 10    # events nobody receives

Starts a private redis-server and the server on 127.0.0.1, connects N clients,
floods, records the server with ``py-spy record --format raw`` (collapsed
stacks) while the flood runs (``--scenario storm``: from just before N
clients connect and subscribe at once, for ``--seconds``), then prints the functions with the most own
samples and the heaviest inclusive frames. Everything is stopped by pid.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run  # noqa: E402

PERF = "--perf" in sys.argv  # perf sees the compiled modules' C; py-spy sees no frames inside one
if not PERF:
    os.environ["WSGW_BENCH_PURE"] = "1"  # run.compiled_tree: the pure Python


def summarize(raw_path: str, top: int) -> str:
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    with open(raw_path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            if not stack:
                continue
            n = int(count)
            total += n
            frames = stack.split(";")
            own[frames[-1]] += n
            for fr in set(frames):
                incl[fr] += n
    lines = [f"{total} samples", "", "own time:"]
    lines += [f"  {c / total:6.1%}  {fr}" for fr, c in own.most_common(top)]
    lines += ["", "inclusive:"]
    lines += [f"  {c / total:6.1%}  {fr}" for fr, c in incl.most_common(top)]
    return "\n".join(lines)


def storm(args: argparse.Namespace, pyspy: str, pid: int, port: int, redis_port: int, raw: str) -> bytes:
    """Record ``pid`` while N clients connect and subscribe at once; the loader's output."""
    spy = subprocess.Popen([pyspy, "record", "--pid", str(pid), "--duration", str(int(args.seconds)), "--rate", "250",
                            "--format", "raw", "--output", raw, "--nonblocking"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)  # py-spy attached
        out = subprocess.run([run.PY, os.path.join(run.HERE, "loadgen.py"), "--server", args.server, "--port",
                              str(port), "--server-pid", str(pid), "--redis-port", str(redis_port), "--prefix", "prof",
                              "--n", str(args.n), "--scenarios", "storm"],
                             capture_output=True, timeout=300, preexec_fn=run.raise_nofile)
    finally:
        spy.wait(timeout=args.seconds + 30)
    return out.stdout


def perf_record(pid: int, seconds: float, out: str, top: int) -> None:
    """``perf record`` of ``pid`` for ``seconds``, then into ``out`` the ``top`` symbols by own samples (with
    their library) and the libraries' shares."""
    data = out + ".data"
    subprocess.run(["perf", "record", "-F", "999", "-p", str(pid), "-o", data, "--", "sleep", str(seconds)],
                   check=True, capture_output=True, timeout=seconds + 30)
    with open(out, "w") as f:
        for sort, lines in (("dso", 15), ("dso,sym", top)):
            report = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", sort, "--stdio",
                                     "--percent-limit", "0.3"], capture_output=True, text=True, timeout=120).stdout
            f.write("\n".join([ln for ln in report.splitlines() if ln and not ln.startswith("#")][:lines]) + "\n\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", default="gateway", choices=["gateway", "autobahn"])
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--out", default="-")
    p.add_argument("--raw", default="", help="also keep py-spy's collapsed stacks here")
    p.add_argument("--reactor", default="")
    p.add_argument("--scenario", default="flood", choices=["flood", "selective", "floor", "storm"])
    p.add_argument("--rate", type=int, default=250, help="py-spy's samples per second")
    p.add_argument("--perf", action="store_true", help="the compiled gateway under `perf record` (own samples by"
                   " library and symbol) instead of the pure one under py-spy; not with --scenario storm")
    args = p.parse_args()
    run.raise_nofile()
    pyspy = os.path.join(os.path.dirname(run.PY), "py-spy")
    with tempfile.TemporaryDirectory(prefix="wsgw-profile-") as workdir:
        redis, redis_port = run.private_redis(workdir)
        try:
            server, port = run.start_server(args.server, workdir, redis_port, "prof", reactor=args.reactor)
            try:
                if args.scenario == "storm":
                    out = storm(args, pyspy, server.pid, port, redis_port, raw := os.path.join(workdir, "p.txt"))
                else:
                    loader = subprocess.Popen(
                        [run.PY, os.path.join(run.HERE, "loadgen.py"), "--server", args.server, "--port", str(port),
                         "--server-pid", str(server.pid), "--redis-port", str(redis_port), "--prefix", "prof",
                         "--n", str(args.n), "--scenarios", f"storm,{args.scenario}", "--duration", str(args.seconds + 4),
                         "--selective-duration", str(args.seconds + 4)],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=run.raise_nofile)
                    # Wait until the storm is over (the loader says so on stderr), then record the flood.
                    assert loader.stderr is not None
                    deadline = time.monotonic() + 120
                    while time.monotonic() < deadline:
                        line = loader.stderr.readline().decode()
                        if "storm done" in line or not line:
                            break
                    time.sleep(3.0 if args.scenario == "floor" else 1.5)  # floor: after its re-subscribe
                    raw = os.path.join(workdir, "profile.txt")
                    if args.perf:
                        perf_record(server.pid, args.seconds, raw, args.top)
                    else:
                        subprocess.run([pyspy, "record", "--pid", str(server.pid), "--duration",
                                        str(int(args.seconds)), "--rate", str(args.rate), "--format", "raw", "--output", raw,
                                        "--nonblocking"], check=True, capture_output=True, timeout=args.seconds + 30)
                    out, _ = loader.communicate(timeout=60)
            finally:
                server.stop()
            text = open(raw).read() if args.perf else summarize(raw, args.top)
            if args.raw:
                shutil.copyfile(raw, args.raw)
            text += "\n\nloader: " + out.decode().strip()[-1500:]
        finally:
            redis.stop()
    if args.out == "-":
        print(text)
    else:
        with open(args.out, "w") as f:
            f.write(text)
        print(text[:4000])


if __name__ == "__main__":
    main()
