"""The benchmark driver (``make bench``, ``make bench-quick``): servers, load, the results table.

For each N it starts, one at a time, on 127.0.0.1 only and against a private
redis-server: the gateway (twistd, the real daemon and config), the bare
Autobahn/Twisted baseline, the Node ``ws`` baseline and the Go baseline
(gorilla/websocket shaped like melody, ``bench/baselines/go``, built by
``make bench-deps``; its column is left out, with a line saying so, when its
binary is missing); runs the load generator (``bench/loadgen.py``, its own
process) against each; stops every process by its pid; then prints the table
with the ratios gateway / each baseline and writes it into
``bench/RESULTS.md`` (between the ``results`` markers, the hand-written
analysis around them is kept).

Every server verifies the subscribe frame's HS256 token. The Node and Go
baselines run twice per N: in broadcast mode (storm, flood, slow consumer,
chat) and in selective mode (storm, selective, the zero-recipient floor),
where, like the gateway, they index sessions by workspace root, rewrite the
event's paths and encode once per workspace.

    python bench/run.py                 # full: N = 1,000 and 10,000 (about 8 minutes)
    python bench/run.py --quick         # N = 1,000, short phases (under two minutes)
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = sys.executable
SECRET = "bench-secret-of-at-least-32-bytes-long"
CHANNELS = ["tree", "chat"]
TOPICS = {
    "tree": "topic.pydio.tree.nodes.changes",
    "meta": "topic.pydio.meta.nodes.changes",
    "tasks": "topic.pydio.tasks.event",
    "idm": "topic.pydio.idm.event",
    "activity": "topic.pydio.activity.event",
    "chat": "topic.pydio.chat.event",
}
NODE_DIR = os.path.join(HERE, "baselines", "node")
GO_BIN = os.path.join(HERE, "baselines", "go", "wsgw-bench-go")
BASELINES = ("autobahn", "node", "go")
SELECTIVE_BASELINES = ("node", "go")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


def redis_command(port: int, *args: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        cmd = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        s.sendall(cmd.encode())
        time.sleep(0.05)
        return s.recv(65536)


def wait_subscribed(redis_port: int, channel: str, count: int, timeout: float = 20.0) -> None:
    """Until ``count`` clients are subscribed to ``channel`` (PUBSUB NUMSUB)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = redis_command(redis_port, "PUBSUB", "NUMSUB", channel)
        m = re.search(rb":(\d+)\r\n$", reply)
        if m and int(m.group(1)) >= count:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{channel}: fewer than {count} subscribers after {timeout} s")


class Proc:
    """A child process stopped by its pid."""

    def __init__(self, name: str, args: list[str], log_path: str, env: dict[str, str] | None = None) -> None:
        self.name = name
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT,
                                     env={**os.environ, **(env or {})}, preexec_fn=raise_nofile)
        self.pid = self.proc.pid

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()


def private_redis(workdir: str, *extra: str) -> tuple[Proc, int]:
    """A redis-server of this run alone on 127.0.0.1 (no persistence; ``extra`` arguments added), answering on the
    port returned; stop it with ``Proc.stop`` (it is stopped here if it does not answer)."""
    port = free_port()
    redis = Proc("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                           "no", *extra], os.path.join(workdir, "redis.log"))
    try:
        wait_port(port, redis.proc)
    except BaseException:
        redis.stop()
        raise
    return redis, port


# -- servers --------------------------------------------------------------------------------------

_COMPILED: dict[str, str] = {}


def compiled_tree(workdir: str, source: str = ROOT) -> str:
    """A directory holding wsgw as a wheel ships it (README "Compiled modules"): ``source``'s (the checkout's)
    ``wsgw/`` copied into ``workdir`` and its ``setup.py`` ``COMPILED`` modules built there by mypyc (~30 s, once per
    bench run and source); the gateway runs with it on ``PYTHONPATH``, after any the caller set (a wsgw tree there
    wins). A ``source`` without its own ``setup.py`` (``git archive main wsgw``) is built with the checkout's.
    ``WSGW_BENCH_PURE=1`` (or a failed build, said on stderr): "" and the gateway runs the checkout's pure Python,
    as ``make install`` does (profilers see no frames of a compiled module: bench/profile.py sets it)."""
    if os.environ.get("WSGW_BENCH_PURE") == "1":
        return ""
    key = os.path.join(workdir, os.path.abspath(source))
    if key not in _COMPILED:
        import shutil
        tree = os.path.join(workdir, f"compiled{len(_COMPILED) or ''}")
        shutil.copytree(os.path.join(source, "wsgw"), os.path.join(tree, "wsgw"),
                        ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        own = os.path.exists(os.path.join(source, "setup.py"))
        if not own:
            log(f"{source} has no setup.py: its COMPILED modules are the checkout's")
        for name in ("setup.py", "setup.cfg", "pyproject.toml", "README.md"):
            shutil.copy(os.path.join(source if own else ROOT, name), tree)
        out = subprocess.run([PY, "setup.py", "-q", "build_ext", "--inplace"], cwd=tree, capture_output=True,
                             env={**os.environ, "WSGW_MYPYC": "1"})
        if out.returncode != 0:
            log("the mypyc build failed: the gateway runs pure Python\n" + out.stderr.decode(errors="replace")[-2000:])
            tree = ""
        _COMPILED[key] = tree
    return _COMPILED[key]


def gateway_ini(port: int, redis_port: int, prefix: str, *, pacing: bool, extra: str = "") -> str:
    topics = "\n".join(f"{t} = {prefix}.{c}" for t, c in TOPICS.items())
    deadline = os.environ.get("WSGW_BENCH_HANDSHAKE_TIMEOUT")  # bench/storm.py: a shorter deadline, to see refusals
    # Keepalive pings every 120 s: the per-event phases compare events, not keepalives (bench/RESULTS.md "Idle cost
    # at N = 10,000"; the daemon's default is 30 s, PROTOCOL.md). Node's `ws` baseline sends no ping; Go's pings 54 s
    # after each connect (melody's default), after every phase; the gateway pings each socket first at a random
    # point of the interval's second half (wsgw.internals.autobahn), so at 54 s its first pings came 27-54 s after
    # the storm, inside the N = 10,000 phases; at 120 s, 60 s or more after it, as late as Go's. bench/idle.py
    # measures the keepalive itself, at any interval, against Go's.
    ping = os.environ.get("WSGW_BENCH_PING_INTERVAL", "120")
    return (
        f"[server]\nlisten = tcp:{port}:interface=127.0.0.1:backlog=4096\nredis = tcp:127.0.0.1:{redis_port}\n"
        f"shutdown_timeout = 5\n{f'handshake_timeout = {deadline}' if deadline else ''}\n"
        f"[auth]\nalgorithms = HS256\n"
        f"[delivery]\n{'' if pacing else 'pacing_rate = 0'}\n"
        # Small outbound limits so the deliberately slow consumer is closed within seconds.
        f"max_queued_bytes = 65536\nmax_queued_frames = 1000\n"
        f"[websocket]\ninbound_rate = 1000\ninbound_burst = 1000\n{f'ping_interval = {ping}' if ping else ''}\n"
        f"[admin]\nlisten = tcp:0:interface=127.0.0.1\n"
        f"[topics]\n{topics}\n{extra}"
    )


def start_server(kind: str, workdir: str, redis_port: int, prefix: str, *, pacing: bool = False,
                 tag: str = "", reactor: str = "", mode: str = "broadcast") -> tuple[Proc, int]:
    port = free_port()
    channels = [f"{prefix}.{TOPICS[c]}" for c in CHANNELS]
    logf = os.path.join(workdir, f"{kind}{tag}.log")
    secret = {"WSGW_HMAC_SECRET": SECRET}
    if kind == "gateway":
        ini = os.path.join(workdir, f"gateway{tag}.ini")
        with open(ini, "w") as f:
            f.write(gateway_ini(port, redis_port, prefix, pacing=pacing))
        twistd = os.path.join(os.path.dirname(PY), "twistd")
        args = [twistd, "--nodaemon", "--pidfile=", f"--logfile={logf}.twistd"]
        if reactor:
            args.append(f"--reactor={reactor}")
        tree = compiled_tree(workdir)
        env = dict(secret, PYTHONPATH=os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), tree])))
        proc = Proc(kind, args + ["wsgw", "--config", ini], logf, env=env)
    elif kind == "autobahn":
        args = [PY, os.path.join(HERE, "baselines", "autobahn_broadcast.py"), "--port", str(port),
                "--redis-port", str(redis_port)]
        for c in channels:
            args += ["--channel", c]
        proc = Proc(kind, args, logf, env=secret)
    elif kind in ("node", "go"):
        args = ["node", os.path.join(NODE_DIR, "server.js")] if kind == "node" else [GO_BIN]
        args += ["--port", str(port), "--redis-port", str(redis_port), "--mode", mode]
        for c in channels:
            args += ["--channel", c]
        proc = Proc(kind, args, logf, env=secret)
    else:
        raise ValueError(kind)
    try:
        wait_port(port, proc.proc)
        wait_subscribed(redis_port, channels[0], 1)
    except Exception:
        proc.stop()
        raise
    return proc, port


def run_loader(kind: str, ports: list[int], pids: list[int], redis_port: int, prefix: str, n: int,
               scenarios: str, phase: dict[str, Any], timeout: float) -> dict[str, Any]:
    args = [PY, os.path.join(HERE, "loadgen.py"), "--server", kind, "--redis-port", str(redis_port),
            "--prefix", prefix, "--n", str(n), "--scenarios", scenarios]
    for p in ports:
        args += ["--port", str(p)]
    for pid in pids:
        args += ["--server-pid", str(pid)]
    for key, value in phase.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    out = subprocess.run(args, capture_output=True, timeout=timeout, preexec_fn=raise_nofile, cwd=ROOT)
    sys.stderr.write(out.stderr.decode(errors="replace")[-3000:])
    if out.returncode != 0:
        raise RuntimeError(f"loadgen {kind} N={n} failed with {out.returncode}")
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


def count_slow_closes(log_path: str) -> int:
    """4008 closes the daemon logged (twistd rotates its log past 1 MB: every rotated file counts)."""
    count = 0
    for path in glob.glob(glob.escape(log_path) + "*"):
        with open(path, encoding="utf-8", errors="replace") as f:
            count += sum(1 for line in f if "reads too slowly" in line)
    return count


# -- the table ------------------------------------------------------------------------------------


def get(d: dict[str, Any] | None, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return d


ROWS: list[tuple[str, tuple[str, ...], str]] = [
    # label, path in a result, better ("hi" / "lo" / "")
    ("flood: deliveries/s", ("flood", "deliveries_per_s"), "hi"),
    ("flood: deliveries per server CPU-s", ("flood", "deliveries_per_cpu_s"), "hi"),
    ("flood: server CPU µs/delivery", ("flood", "cpu_us_per_delivery"), "lo"),
    ("flood: latency p50 ms", ("flood", "p50_ms"), "lo"),
    ("flood: latency p99 ms", ("flood", "p99_ms"), "lo"),
    ("flood: latency max ms", ("flood", "max_ms"), "lo"),
    ("flood: lost / duplicated", ("flood", "lost_dup"), ""),
    ("one event alone: reach-all p50 ms", ("single", "reach_all_p50_ms"), "lo"),
    ("one event alone: reach-all max ms", ("single", "reach_all_max_ms"), "lo"),
    ("paced 10/s: reach-all p50 ms", ("paced", "reach_all_p50_ms"), "lo"),
    ("paced 10/s: reach-all max ms", ("paced", "reach_all_max_ms"), "lo"),
    ("paced 10/s: latency p99 ms", ("paced", "p99_ms"), "lo"),
    ("paced 10/s: lost / duplicated", ("paced", "lost_dup"), ""),
    ("idle: KB RSS per connection", ("idle", "kb_per_connection"), "lo"),
    ("idle: KB RSS per connection, pacing on (default)", ("idle_pacing_on", "kb_per_connection"), "lo"),
    ("storm: subscribes/s", ("storm", "subscribes_per_s"), "hi"),
    ("storm: time to all subscribed s", ("storm", "time_to_all_s"), "lo"),
    ("storm: failed", ("storm", "failed"), ""),
    ("storm: server CPU s (connect + subscribe, token verified)", ("storm", "server_cpu_s"), "lo"),
    ("storm, sessions indexed (selective mode): server CPU s", ("storm_selective", "server_cpu_s"), "lo"),
    ("slow: others deliveries/s vs without", ("slow", "throughput_ratio"), "hi"),
    ("slow: others p99 ms (without)", ("slow", "p99_pair"), ""),
    ("slow: server RSS max MB (start)", ("slow", "rss_pair"), ""),
    ("slow: slow client closed with", ("slow", "closed_with"), ""),
    ("slow: others lost / duplicated", ("slow", "lost_dup"), ""),
    ("chat 100 members: posts/s", ("chat", "posts_per_s"), "hi"),
    ("chat 100 members: p99 ms", ("chat", "p99_ms"), "lo"),
    ("chat: lost / duplicated", ("chat", "lost_dup"), ""),
    ("selective 1,000 ws: CPU µs/event", ("selective", "cpu_us_per_event"), "lo"),
    ("selective 1,000 ws: recipients/event", ("selective", "recipients_per_event"), ""),
    ("selective 1,000 ws: p99 ms", ("selective", "p99_ms"), "lo"),
    ("selective 1,000 ws: lost / duplicated", ("selective", "lost_dup"), ""),
    ("selective 1 recipient: CPU µs/event", ("selective_one", "cpu_us_per_event"), "lo"),
    ("selective 1 recipient: p99 ms", ("selective_one", "p99_ms"), "lo"),
    ("selective: lost / duplicated (1 recipient)", ("selective_one", "lost_dup"), ""),
    ("no recipient (the floor): CPU µs/event", ("floor", "cpu_us_per_event"), "lo"),
    ("no recipient: stray deliveries", ("floor", "stray_deliveries"), ""),
]


def derive(r: dict[str, Any]) -> dict[str, Any]:
    """Add the composite figures the table shows."""
    if r.get("server") == "gateway" and "storm" in r:
        r["storm_selective"] = r["storm"]  # the gateway always indexes its sessions
    for key in ("flood", "paced", "chat", "selective", "selective_one", "slow"):
        if key in r:
            r[key]["lost_dup"] = f"{r[key]['lost']} / {r[key]['duplicates']}"
    slow = r.get("slow")
    if slow:
        ref = slow["ref"]
        if ref.get("deliveries_per_s") and slow.get("deliveries_per_s"):
            slow["throughput_ratio"] = round(slow["deliveries_per_s"] / ref["deliveries_per_s"], 2)
        slow["p99_pair"] = f"{slow['p99_ms']} ({ref['p99_ms']})"
        slow["rss_pair"] = f"{slow['rss_kb_max'] / 1024:.0f} ({slow['rss_kb_start'] / 1024:.0f})"
        # What the slow client saw when it read again at the end of the phase: the close frame, or a dropped
        # connection (after a close the daemon drops the TCP connection once the 5 s close handshake timeout
        # passes, and the reset discards what the client had not read); the daemon's log says why.
        code = slow.get("slow_client_close_code")
        seen = str(code) if code else ("dropped" if slow.get("slow_client_disconnected") else "still open")
        logged = slow.get("server_log_slow_closes")
        slow["closed_with"] = f"4008 (daemon log: {logged}); client saw: {seen}" if logged else seen
    return r


def ratio(a: Any, b: Any, better: str) -> str:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or not a or not b:
        return ""
    if better == "lo":  # how many times better (cheaper/faster) the gateway is
        return f"{b / a:.2f}×"
    return f"{a / b:.2f}×"


def fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


NAMES = {"autobahn": "Autobahn", "node": "Node ws", "go": "Go gorilla"}


def table(results: dict[int, dict[str, dict[str, Any]]]) -> str:
    lines = []
    for n, by_server in sorted(results.items()):
        gw = by_server.get("gateway", {})
        base = [k for k in BASELINES if k in by_server]
        lines.append(f"\n### N = {n:,}\n")
        lines.append("| figure | wsgw | " + " | ".join(NAMES[k] for k in base) + " | "
                     + " | ".join(f"wsgw / {NAMES[k]}" for k in base) + " |")
        lines.append("|---|---:|" + "---:|" * (2 * len(base)))
        for label, path, better in ROWS:
            a = get(gw, *path)
            others = [get(by_server[k], *path) for k in base]
            if a is None and all(o is None for o in others):
                continue
            lines.append(f"| {label} | {fmt(a)} | " + " | ".join(fmt(o) for o in others) + " | "
                         + " | ".join(ratio(a, o, better) if better else "" for o in others) + " |")
    return "\n".join(lines) + "\n"


def versions() -> dict[str, str]:
    def pyver(mod: str) -> str:
        try:
            from importlib.metadata import version
            return version(mod)
        except Exception:
            return "?"

    def node(pkg: str) -> str:
        try:
            with open(os.path.join(NODE_DIR, "node_modules", pkg, "package.json")) as f:
                return str(json.load(f)["version"])
        except OSError:
            return "?"

    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    def deb(pkg: str) -> str:
        try:
            return subprocess.run(["dpkg-query", "-W", "-f", "${Version}", pkg], capture_output=True,
                                  text=True).stdout.strip() or "?"
        except OSError:
            return "?"

    node_v = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    try:
        go_v = subprocess.run(["go", "version"], capture_output=True, text=True).stdout.split()[2]
    except (OSError, IndexError):
        go_v = "?"
    redis_v = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()[2]
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores", "kernel": platform.release(),
        "python": platform.python_version(), "twisted": pyver("twisted"), "autobahn": pyver("autobahn"),
        "txredisapi": pyver("txredisapi"), "uvloop (load generator)": pyver("uvloop"), "node": node_v,
        "ws": node("ws"), "ioredis": node("ioredis"), "jsonwebtoken": node("jsonwebtoken"), "go": go_v,
        "gorilla/websocket": deb("golang-github-gorilla-websocket-dev"),
        "redigo": deb("golang-github-gomodule-redigo-dev"), "golang-jwt": deb("golang-github-golang-jwt-jwt-dev"),
        "redis-server": redis_v,
    }


def write_results(path: str, body: str) -> None:
    begin, end = "<!-- results:begin -->", "<!-- results:end -->"
    try:
        with open(path, encoding="utf-8") as f:
            old = f.read()
    except OSError:
        old = f"# wsgw benchmark results\n\n{begin}\n{end}\n"
    if begin not in old:
        old += f"\n{begin}\n{end}\n"
    head, rest = old.split(begin, 1)
    tail = rest.split(end, 1)[1] if end in rest else ""
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{head}{begin}\n{body}\n{end}{tail}")


# -- the run --------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="N = 1,000 only, short phases")
    p.add_argument("--n", type=int, action="append", help="connection counts (default 1000 and 10000)")
    p.add_argument("--servers", default="gateway,autobahn,node,go")
    p.add_argument("--out", default=None, help="results file (default bench/RESULTS.md, quick: bench/RESULTS-quick.md)")
    p.add_argument("--no-two-process", action="store_true")
    p.add_argument("--workdir", default="", help="keep configs and server logs here (default: a temporary dir)")
    p.add_argument("--reactor", default="", help="twistd reactor for the gateway (default: twistd's choice)")
    p.add_argument("--flood-window", type=int, default=0,
                   help="events in flight in the floods (default 8,000 / N, at least 2: 2 at N = 10,000, where a read "
                        "from Redis then rarely holds two events; bench/per_event.py --flood measures more)")
    args = p.parse_args()
    ns = args.n or ([1000] if args.quick else [1000, 10000])
    out = args.out or os.path.join(HERE, "RESULTS-quick.md" if args.quick else "RESULTS.md")
    phase = dict(duration=2.0, paced_duration=2.0, slow_duration=6.0, selective_duration=2.0, chat_duration=2.0,
                 single_events=3) \
        if args.quick else dict(duration=5.0, paced_duration=3.0, slow_duration=8.0, selective_duration=3.0,
                                chat_duration=3.0, single_events=5)
    if args.flood_window:
        phase["window"] = args.flood_window
    if not os.path.isdir(os.path.join(NODE_DIR, "node_modules", "ws")):
        sys.exit("bench: the Node baseline is not installed: run `make bench` (npm ci in bench/baselines/node)")
    raise_nofile()
    servers = args.servers.split(",")
    if "go" in servers and not os.access(GO_BIN, os.X_OK):
        log(f"the Go baseline is not built ({os.path.relpath(GO_BIN, ROOT)} is missing: `make bench-deps` builds it "
            "from Debian's golang packages): its column is left out")
        servers.remove("go")
    started = time.monotonic()
    results: dict[int, dict[str, dict[str, Any]]] = {}
    extra: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="wsgw-bench-") as tmp:
        workdir = args.workdir or tmp
        os.makedirs(workdir, exist_ok=True)
        redis, redis_port = private_redis(workdir, "--maxclients", "1000")
        try:
            for n in ns:
                results[n] = {}
                for kind in servers:
                    prefix = f"bench{n}{kind}"
                    scenarios = "storm,single,paced,flood,slow,chat"
                    if kind == "gateway":
                        # Pacing left at its default for the paced run; switched off for the floods.
                        proc, port = start_server(kind, workdir, redis_port, prefix + "p", pacing=True,
                                                  tag=f"-{n}-paced", reactor=args.reactor)
                        try:
                            log(f"N={n} gateway (pacing on): storm, paced")
                            paced = run_loader(kind, [port], [proc.pid], redis_port, prefix + "p", n, "storm,single,paced",
                                               phase, 300)
                        finally:
                            proc.stop()
                        scenarios = "storm,flood,slow,selective,floor,chat"
                    proc, port = start_server(kind, workdir, redis_port, prefix, tag=f"-{n}", reactor=args.reactor)
                    # The slow consumer must fill its kernel buffers (the server's send buffer grows to 4 MB)
                    # before the daemon's queue: at 10,000 sockets each gets ~7 events/s, so the events are
                    # bigger and the phase longer there.
                    big = n > 1000
                    run_phase = dict(phase, slow_pad=32768 if big else 4096,
                                     slow_duration=phase["slow_duration"] * (2.5 if big else 1))
                    try:
                        log(f"N={n} {kind}: {scenarios}")
                        r = run_loader(kind, [port], [proc.pid], redis_port, prefix, n, scenarios, run_phase, 400)
                    finally:
                        proc.stop()
                    if kind in SELECTIVE_BASELINES:
                        # Selective mode: sessions indexed by workspace root, as the gateway does.
                        proc, port = start_server(kind, workdir, redis_port, prefix + "s", tag=f"-{n}-selective",
                                                  mode="selective")
                        try:
                            log(f"N={n} {kind} (selective mode): storm, selective, floor")
                            sel = run_loader(kind, [port], [proc.pid], redis_port, prefix + "s", n,
                                             "storm,selective,floor", phase, 300)
                        finally:
                            proc.stop()
                        r["storm_selective"] = sel["storm"]
                        r["idle_selective"] = sel["idle"]
                        for key in ("selective", "selective_one", "floor"):
                            r[key] = sel[key]
                    if kind == "gateway":
                        r["paced"] = paced["paced"]
                        r["single"] = paced["single"]
                        r["idle_pacing_on"] = paced["idle"]
                        r["paced_storm"] = paced["storm"]
                        r["slow"]["server_log_slow_closes"] = count_slow_closes(
                            os.path.join(workdir, f"gateway-{n}.log.twistd"))
                    results[n][kind] = derive(r)
                    results[n][kind]["n"] = n
            if not args.no_two_process and "gateway" in servers:
                n = max(ns)
                log(f"N={n}: two gateway processes on one Redis vs one")
                procs = []
                try:
                    for i in range(2):
                        procs.append(start_server("gateway", workdir, redis_port, "bench2p", tag=f"-2p{i}",
                                                  reactor=args.reactor))
                    wait_subscribed(redis_port, f"bench2p.{TOPICS['tree']}", 2)
                    two = run_loader("gateway", [pt for _, pt in procs], [pr.pid for pr, _ in procs], redis_port,
                                     "bench2p", n, "storm,flood", phase, 300)
                finally:
                    for pr, _ in procs:
                        pr.stop()
                extra["two_process"] = {"n": n, "one": results[n]["gateway"]["flood"], "two": two["flood"]}
        finally:
            redis.stop()
    elapsed = time.monotonic() - started
    body = render(results, extra, args, elapsed)
    print(body)
    write_results(out, body)
    with open(out.replace(".md", ".json"), "w") as f:
        json.dump({"results": results, "extra": extra, "versions": versions()}, f, indent=1, default=str)
    log(f"done in {elapsed:.0f} s; written to {os.path.relpath(out, ROOT)}")


def render(results: dict[int, dict[str, dict[str, Any]]], extra: dict[str, Any], args: argparse.Namespace,
           elapsed: float) -> str:
    v = versions()
    lines = [f"Run: `{'make bench-quick' if args.quick else 'make bench'}` on {time.strftime('%Y-%m-%d %H:%M')}, "
             f"{elapsed:.0f} s. " + "; ".join(f"{k} {val}" for k, val in v.items()) + "."]
    lines.append(table(results))
    checks = targets(results, extra)
    if checks:
        lines.append("\n### Targets (issue 4)\n")
        lines.append("| target | measured | met |")
        lines.append("|---|---|---|")
        lines += [f"| {t} | {m} | {'yes' if ok else '**no**'} |" for t, m, ok in checks]
    checks = goals(results)
    if checks:
        lines.append("\n### Goals (issue 13: per-event cost, per-connection cost, against Node and Go)\n")
        lines.append("| goal | measured | met |")
        lines.append("|---|---|---|")
        lines += [f"| {t} | {m} | {'yes' if ok else '**no**'} |" for t, m, ok in checks]
    two = extra.get("two_process")
    if two:
        one, tw = two["one"], two["two"]
        lines.append(f"\n### Two gateway processes on one Redis vs one (N = {two['n']:,}, flood)\n")
        lines.append("| | deliveries/s | server CPU µs/delivery | p99 ms | lost / dup |")
        lines.append("|---|---:|---:|---:|---:|")
        for name, r in (("1 process", one), ("2 processes", tw)):
            lines.append(f"| {name} | {fmt(r['deliveries_per_s'])} | {fmt(r['cpu_us_per_delivery'])} | "
                         f"{fmt(r['p99_ms'])} | {r['lost']} / {r['duplicates']} |")
    return "\n".join(lines)


def goals(results: dict[int, dict[str, dict[str, Any]]]) -> list[tuple[str, str, bool]]:
    """Issue 13's goals that one run measures (flood, per-event cost, connect cost), per N."""
    out: list[tuple[str, str, bool]] = []
    for n in sorted(results):
        gw, nd, go = (results[n].get(k, {}) for k in ("gateway", "node", "go"))
        g, d, o = (get(x, "flood", "deliveries_per_cpu_s") for x in (gw, nd, go))
        if g and o:
            out.append((f"N={n:,} flood deliveries per CPU-s ≥ 1.0× Go", f"{g:,} vs {o:,} ({g / o:.2f}×)", g >= o))
        if g and d:
            out.append((f"N={n:,} flood deliveries per CPU-s ≥ 1.3× Node", f"{g:,} vs {d:,} ({g / d:.2f}×)",
                        g >= 1.3 * d))
        for key, label in (("selective_one", "one-recipient event"), ("floor", "event nobody receives")):
            a, b = get(gw, key, "cpu_us_per_event"), get(nd, key, "cpu_us_per_event")
            if a and b:
                out.append((f"N={n:,} {label}: CPU per event ≤ Node's", f"{a} vs {b} µs", a <= b))
        a, b = get(gw, "selective", "cpu_us_per_event"), get(go, "selective", "cpu_us_per_event")
        if a and b:
            k = get(gw, "selective", "recipients_per_event")
            out.append((f"N={n:,} selective ({k} recipients per event): CPU per event ≤ 0.8× Go's",
                        f"{a} vs {b} µs ({a / b:.2f}×)", a <= 0.8 * b))
        cpu, subs = get(gw, "storm", "server_cpu_s"), get(gw, "storm", "subscribed")
        if cpu and subs:
            ms = cpu / subs * 1e3
            out.append((f"N={n:,} connect + subscribe ≤ 0.5 ms of server CPU each", f"{ms:.2f} ms", ms <= 0.5))
    return out


def targets(results: dict[int, dict[str, dict[str, Any]]], extra: dict[str, Any]) -> list[tuple[str, str, bool]]:
    out: list[tuple[str, str, bool]] = []
    for n in sorted(results):
        gw, ab, nd = (results[n].get(k, {}) for k in ("gateway", "autobahn", "node"))
        g, a, d = (get(x, "flood", "deliveries_per_cpu_s") for x in (gw, ab, nd))
        if g and d:
            out.append((f"N={n:,} broadcast deliveries per CPU-s ≥ Node", f"{g:,} vs {d:,} ({g / d:.2f}×)", g >= d))
        if g and a:
            out.append((f"N={n:,} broadcast deliveries per CPU-s ≥ 1.5× Autobahn", f"{g:,} vs {a:,} ({g / a:.2f}×)",
                        g >= 1.5 * a))
        bad = [s for s in ("flood", "paced", "chat", "selective", "selective_one")
               if (get(gw, s, "lost") or 0) != 0 or (get(gw, s, "duplicates") or 0) != 0]
        out.append((f"N={n:,} zero lost/duplicated (gateway, every scenario but the slow consumer)",
                    "all zero" if not bad else "not zero in " + ", ".join(bad), not bad))
    if 10000 in results:
        gw, nd = results[10000].get("gateway", {}), results[10000].get("node", {})
        g, d = get(gw, "single", "reach_all_p50_ms"), get(nd, "single", "reach_all_p50_ms")
        if g and d:
            out.append(("N=10,000 broadcast: last client reached within Node's (one event alone, p50)",
                        f"{g} ms vs {d} ms", g <= d))
        for key, label in (("idle_pacing_on", "default config"), ("idle", "pacing off")):
            kb = get(gw, key, "kb_per_connection")
            if kb:
                out.append((f"N=10,000 ≤ 8 KB RSS per idle subscribed session ({label})", f"{kb} KB", kb <= 8))
        p99 = get(gw, "selective", "p99_ms")
        if p99 is not None:
            out.append(("N=10,000 selective p99 ≤ 20 ms at 1,000 events/s", f"{p99} ms", p99 <= 20))
    if 1000 in results and 10000 in results:
        for key, label in (("selective", "1,000 workspaces"), ("selective_one", "one recipient per event")):
            a, b = (get(results[n].get("gateway", {}), key, "cpu_us_per_event") for n in (1000, 10000))
            if a and b:
                out.append((f"selective ({label}): CPU per event at 10,000 / 1,000 ≤ 1.2", f"{b} / {a} µs = "
                            f"{b / a:.2f}", b / a <= 1.2))
    return out


if __name__ == "__main__":
    main()
