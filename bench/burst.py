"""What a prompt reader sees when 12,000 node events of its workspace are published at once (issue 11, §2).

    python bench/burst.py                     # make bench-burst: 4 cases x 3 runs, about a minute
    python bench/burst.py --repeat 1 --events 2000

For each pacing setting (the default: 30 frames/s, burst 20, ``pacing_max_delay`` 2 s; and ``pacing_rate = 0``)
it starts the real daemon (``twistd wsgw``, everything else at its default, Redis as its bus: a private
redis-server; all on 127.0.0.1, stopped by pid), connects one prompt reader (an Autobahn client on this
process's reactor, reading every frame as it comes) subscribed to one workspace, and for each case publishes
the events at once (pipelined PUBLISHes on one Redis connection), then measures, from the first PUBLISH: the
time to publish them all, to the reader's first and last frame, the frames received, their order and any
close. Cases:

- ``delete``: ``--events`` DELETEs of distinct files of the workspace (a bulk delete). Every one must arrive,
  in publish order.
- ``update``: ``--events`` UPDATE_CONTENT events of ``--nodes`` distinct files, round-robin, each carrying its
  sequence number as ``Etag``. PROTOCOL.md §4.1 pre-processing step 2 merges them per ``Target.Uuid`` over
  the idle window (``batch_window``, 1 s) before the fan-out: the reader must get one frame per node, with
  that node's last ``Etag``.

After the expected frames the reader listens ``SETTLE`` more seconds, so that late or duplicate frames count.
Prints a Markdown table (median and range over ``--repeat`` runs) and the raw figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import jwt
import txredisapi
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import reactor as _reactor
from twisted.internet import task
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from run import TOPICS, free_port, wait_port, wait_subscribed  # noqa: E402  (bench/run.py, this directory)

reactor: Any = _reactor
SECRET = "burst-secret-of-at-least-32-bytes-long"
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
SETTLE = 3.0
WORKSPACE = "ds/bulk"


def now() -> float:
    return float(reactor.seconds())


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def until(predicate: Any, timeout: float, interval: float = 0.01) -> bool:
    deadline = now() + timeout
    while not predicate():
        if now() >= deadline:
            return False
        await sleep(interval)
    return True


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- the daemon


class Daemon:
    """``twistd wsgw`` with the defaults but the listeners, the bus and (``pacing=False``) ``pacing_rate = 0``."""

    def __init__(self, workdir: str, redis_port: int, prefix: str, pacing: bool) -> None:
        self.port = free_port()
        ini = os.path.join(workdir, f"burst-{'paced' if pacing else 'unpaced'}.ini")
        topics = "\n".join(f"{t} = {prefix}.{c}" for t, c in TOPICS.items())
        with open(ini, "w") as f:
            f.write(f"[server]\nlisten = tcp:{self.port}:interface=127.0.0.1\nredis = tcp:127.0.0.1:{redis_port}\n"
                    f"shutdown_timeout = 5\n[admin]\nlisten = tcp:0:interface=127.0.0.1\n[topics]\n{topics}\n"
                    + ("" if pacing else "[delivery]\npacing_rate = 0\n"))
        self._log = open(ini[:-4] + ".log", "wb")  # noqa: SIM115 - closed in stop()
        args = [TWISTD, "--nodaemon", "--pidfile=", f"--logfile={ini[:-4]}.twistd.log", "wsgw", "--config", ini]
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT,
                                     env={**os.environ, "WSGW_HMAC_SECRET": SECRET})
        try:
            wait_port(self.port, self.proc)
            wait_subscribed(redis_port, f"{prefix}.{TOPICS['tree']}", 1)
        except Exception:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()


# --------------------------------------------------------------------------- the reader


class Reader(WebSocketClientProtocol):
    """A prompt reader: notes the arrival time and the node (Uuid, Etag) of every frame."""

    def __init__(self) -> None:
        super().__init__()
        self.subscribed: Deferred[None] = Deferred()
        self.frames: list[tuple[float, str, str, str]] = []  # (time, Type, Uuid, Etag)
        self.closed: tuple[int | None, str | None] | None = None

    def onOpen(self) -> None:
        spaces = [{"uuid": "w-bulk", "slug": "bulk", "roots": [{"uuid": "r-bulk", "path": WORKSPACE}]}]
        token = jwt.encode({"name": "reader", "sub": "uuid-reader", "exp": int(time.time()) + 3600,
                            "workspaces": spaces}, SECRET, algorithm="HS256")
        self.sendMessage(json.dumps({"@type": "subscribe", "jwt": token}).encode())

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        frame = json.loads(payload)
        if frame.get("@type") == "subscribed":
            self.subscribed.callback(None)
            return
        node = frame.get("Target") or frame.get("Source") or {}
        self.frames.append((now(), frame.get("Type", "CREATE"), node.get("Uuid", ""), node.get("Etag", "")))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.closed = (code, reason)


async def open_reader(port: int) -> Reader:
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}/ws")
    factory.protocol = Reader
    factory.setProtocolOptions(maxMessagePayloadSize=0, maxFramePayloadSize=0)
    reader: Reader = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10),
                                           factory.buildProtocol(None))
    await reader.subscribed.addTimeout(10, reactor)
    return reader


# --------------------------------------------------------------------------- one case


def events_for(case: str, run: int, count: int, nodes: int) -> tuple[list[str], int]:
    """The events of one run of a case, and the frames the reader must get."""
    if case == "delete":
        return [json.dumps({"Type": "DELETE", "Source": {"Uuid": f"r{run}-{i}", "Type": "LEAF",
                                                         "Path": f"{WORKSPACE}/run{run}/f{i:05d}.txt"}})
                for i in range(count)], count
    return [json.dumps({"Type": "UPDATE_CONTENT", "Target": {
        "Uuid": f"r{run}-{i % nodes}", "Type": "LEAF", "Path": f"{WORKSPACE}/run{run}/n{i % nodes:03d}.txt",
        "Etag": str(i), "Size": i}}) for i in range(count)], nodes


async def measure(case: str, run: int, reader: Reader, redis: Any, channel: str, pid: int, count: int,
                  nodes: int) -> dict[str, Any]:
    events, expected = events_for(case, run, count, nodes)
    reader.frames.clear()
    cpu0 = cpu_seconds(pid)
    started = now()
    await DeferredList([redis.publish(channel, e) for e in events], fireOnOneErrback=True, consumeErrors=True)
    published = now() - started
    await until(lambda: len(reader.frames) >= expected or reader.closed is not None, 60)
    await sleep(SETTLE)
    frames = [f for f in reader.frames if f[2].startswith(f"r{run}-")]
    times = [t - started for t, *_ in frames]
    if case == "delete":
        indexes = [int(uuid.split("-")[1]) for _, _, uuid, _ in frames]
        in_order = indexes == list(range(count))
        last_etag_ok = True
    else:
        last = {f"r{run}-{n}": str(max(i for i in range(count) if i % nodes == n)) for n in range(nodes)}
        got = {uuid: etag for _, _, uuid, etag in frames}
        in_order = len(frames) == len(got)  # one frame per node, none repeated
        last_etag_ok = got == last
    return {
        "case": case, "events": count, "frames": len(frames), "expected": expected, "published_in": published,
        "first": min(times) if times else None, "last": max(times) if times else None, "in_order": in_order,
        "last_etag": last_etag_ok, "closed": reader.closed, "daemon_cpu": cpu_seconds(pid) - cpu0,
        "by_1s": sum(1 for t in times if t <= 1.0), "by_2s": sum(1 for t in times if t <= 2.0),
    }


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    workdir = tempfile.mkdtemp(prefix="wsgw-burst-")
    redis_port = free_port()
    redis_log = open(os.path.join(workdir, "redis.log"), "wb")  # noqa: SIM115
    redis_server = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                     "--appendonly", "no"], stdout=redis_log, stderr=subprocess.STDOUT)
    results: list[dict[str, Any]] = []
    try:
        wait_port(redis_port, redis_server)
        redis = await txredisapi.Connection("127.0.0.1", redis_port, reconnect=False)
        for pacing in (True, False):
            prefix = f"burst{int(pacing)}"
            daemon = Daemon(workdir, redis_port, prefix, pacing)
            try:
                reader = await open_reader(daemon.port)
                for case in ("delete", "update"):
                    for _ in range(args.repeat):
                        result = await measure(case, len(results), reader, redis, f"{prefix}.{TOPICS['tree']}",
                                               daemon.proc.pid, args.events, args.nodes)
                        result["pacing"] = "default (30/s, burst 20, max delay 2 s)" if pacing else "off"
                        results.append(result)
                        print(json.dumps(result), file=sys.stderr, flush=True)
                reader.sendClose(1000)
            finally:
                daemon.stop()
        await redis.disconnect()
    finally:
        if redis_server.poll() is None:
            os.kill(redis_server.pid, signal.SIGTERM)
            redis_server.wait(10)
        redis_log.close()
    return results


def table(results: list[dict[str, Any]]) -> str:
    def span(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"

    rows = ["| case | pacing | frames / expected | in order, none repeated | last Etag per node | closed | "
            "published in, s | first frame, s | last frame, s | frames by 1 s / 2 s | daemon CPU, s |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    keys = list(dict.fromkeys((r["case"], r["pacing"]) for r in results))
    for case, pacing in keys:
        rs = [r for r in results if (r["case"], r["pacing"]) == (case, pacing)]
        label = (f"{rs[0]['events']:,} DELETEs" if case == "delete"
                 else f"{rs[0]['events']:,} UPDATE_CONTENT of {rs[0]['expected']} nodes")
        frames = sorted({f"{r['frames']:,} / {r['expected']:,}" for r in rs})
        rows.append(
            f"| {label} | {pacing} | {', '.join(frames)} | {'yes' if all(r['in_order'] for r in rs) else 'NO'} | "
            f"{'yes' if all(r['last_etag'] for r in rs) else 'NO'} | "
            f"{'none' if all(r['closed'] is None for r in rs) else [r['closed'] for r in rs]} | "
            f"{span([r['published_in'] for r in rs])} | {span([r['first'] for r in rs if r['first'] is not None])} | "
            f"{span([r['last'] for r in rs if r['last'] is not None])} | "
            + "; ".join(f"{r['by_1s']:,} / {r['by_2s']:,}" for r in rs) + f" | {span([r['daemon_cpu'] for r in rs])} |")
    return "\n".join(rows)


async def entry(options: argparse.Namespace) -> None:
    results = await main(options)
    print(f"Run: `python bench/burst.py` on {time.strftime('%Y-%m-%d %H:%M')}, {options.events:,} events, "
          f"{options.repeat} runs a case; median (min–max).\n")
    print(table(results))
    whole = all(r["frames"] == r["expected"] and r["in_order"] and r["last_etag"] and r["closed"] is None
                for r in results)
    print(f"\n{'every run whole' if whole else 'SOME RUNS NOT WHOLE'}")
    if not whole:
        raise SystemExit(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=12000, help="events published at once (12000)")
    parser.add_argument("--nodes", type=int, default=100, help="distinct nodes of the update case (100)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each case (3)")
    task.react(lambda _: ensureDeferred(entry(parser.parse_args())))
