"""The load generator: N raw WebSocket clients on asyncio + uvloop, events published through Redis.

It runs in its own process (``bench/run.py`` starts it once per server and N),
connects N clients to one server (or several: ``--port`` repeated spreads them),
subscribes each with a real token, then runs the scenarios in order on that one
set of sockets and prints one JSON document with everything measured:

- from the client side: deliveries per second, publish-to-receive latency
  (the publish time travels in the event: ``bench:<seq>:<µs>``) p50/p99/max,
  time for one event to reach all its recipients, lost and duplicated
  deliveries (every client checks that sequence numbers only grow; every
  event's receive count is compared with its expected recipients);
- from the server side: CPU seconds (utime + stime) and RSS read from
  ``/proc/<pid>`` of the server process(es) around each phase.

The client is hand-written (frames parsed in place, a zero mask key), because
a library client costs more CPU per received frame than the servers under test.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import os
import random
import re
import resource
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import jwt

SECRET = "bench-secret-of-at-least-32-bytes-long"
MARK = re.compile(rb"bench:(\d+):(\d+)")
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
_now = time.monotonic


# -- /proc ----------------------------------------------------------------------------------------


def proc_cpu(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` (all their threads)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / _TICK


def proc_cpu_split(pids: list[int]) -> tuple[float, float]:
    """``(user, system)`` CPU seconds of ``pids`` (all their threads): what the process ran, what the kernel ran for it."""
    user = system = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        user += int(fields[11])
        system += int(fields[12])
    return user / _TICK, system / _TICK


def proc_rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/statm", "rb") as f:
            total += int(f.read().split()[1]) * _PAGE_KB
    return total


# -- tokens and events ----------------------------------------------------------------------------


def token(login: str, workspaces: list[dict[str, Any]], ttl: float = 7200) -> str:
    claims = {"name": login, "sub": f"uuid-{login}", "profile": "standard", "roles": "",
              "workspaces": workspaces, "exp": int(time.time() + ttl)}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def workspace(uuid: str, slug: str, path: str) -> dict[str, Any]:
    return {"uuid": uuid, "slug": slug, "roots": [{"uuid": f"r-{uuid}", "path": path}]}


BROADCAST_WS = workspace("ws-bench", "bench", "pydiods1/bench")


def node_event(seq: int, root: str, pad: int = 0) -> bytes:
    """A rename inside ``root`` (not merged by the idle window: delivered at once), stamped with seq and time."""
    mark = f"bench:{seq}:{int(_now() * 1e6)}"
    target = {"Uuid": mark, "Path": f"{root}/file-{seq}.txt", "Type": "LEAF", "Size": "1024",
              "MTime": "1718022000", "Etag": "e" * 32}
    if pad:
        target["MetaStore"] = {"bench_pad": json.dumps("x" * pad)}
    source = {"Uuid": mark, "Path": f"{root}/old-{seq}.txt", "Type": "LEAF"}
    return json.dumps({"Type": "UPDATE_PATH", "Target": target, "Source": source}).encode()


# -- the WebSocket client -------------------------------------------------------------------------


def text_frame(payload: bytes) -> bytes:
    """A masked client text frame with a zero mask key (masking is then the identity)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x81, 0x80 | n))
    elif n < 65536:
        head = bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x81, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


class Client(asyncio.Protocol):
    """One WebSocket client; text frames go to ``sink(client, payload, now)``."""

    __slots__ = ("idx", "transport", "_buf", "_open", "opened", "sink", "last_seq", "close_code", "lost",
                 "_frag", "_path", "_host", "subscribed", "seen")

    def __init__(self, idx: int, host: str, path: str, sink: Callable[[Client, bytes, float], None]) -> None:
        self.idx = idx
        self.transport: asyncio.Transport | None = None
        self._buf = b""
        self._open = False
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.subscribed: asyncio.Future[None] | None = None
        self.sink = sink
        self.last_seq = -1
        self.seen: set[int] = set()  # for unordered streams (chat: several posters)
        self.close_code: int | None = None
        self.lost = False
        self._frag: list[bytes] | None = None
        self._path = path
        self._host = host

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(  # type: ignore[attr-defined]
            f"GET {self._path} HTTP/1.1\r\nHost: {self._host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: http://{self._host}\r\n\r\n".encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"lost before the handshake: {exc}"))
        if self.subscribed is not None and not self.subscribed.done():
            self.subscribed.set_exception(ConnectionError(f"lost before subscribed (close {self.close_code})"))

    def send_text(self, payload: bytes) -> None:
        if self.transport is not None and not self.lost:
            self.transport.write(text_frame(payload))

    def data_received(self, data: bytes) -> None:
        if self._buf:
            data = self._buf + data
            self._buf = b""
        if not self._open:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self._buf = data
                return
            status = data[:data.find(b"\r\n")]
            if b" 101 " not in status:
                self.opened.set_exception(ConnectionError(status.decode(errors="replace")))
                assert self.transport is not None
                self.transport.close()
                return
            self._open = True
            self.opened.set_result(None)
            data = data[end + 4:]
        now = _now()
        pos, n = 0, len(data)
        while n - pos >= 2:
            b0, b1 = data[pos], data[pos + 1] & 0x7F
            if b1 < 126:
                start = pos + 2
            elif b1 == 126:
                if n - pos < 4:
                    break
                b1 = int.from_bytes(data[pos + 2:pos + 4], "big")
                start = pos + 4
            else:
                if n - pos < 10:
                    break
                b1 = int.from_bytes(data[pos + 2:pos + 10], "big")
                start = pos + 10
            end = start + b1
            if end > n:
                break
            payload = data[start:end]
            pos = end
            op = b0 & 0x0F
            if op == 1 and b0 & 0x80:
                self.sink(self, payload, now)
            elif op == 1 or op == 0:
                self._frag = (self._frag or []) + [payload]
                if b0 & 0x80:
                    whole, self._frag = b"".join(self._frag), None
                    self.sink(self, whole, now)
            elif op == 9:  # ping -> pong
                assert self.transport is not None
                self.transport.write(bytes((0x8A, 0x80 | len(payload))) + b"\0\0\0\0" + payload)
            elif op == 8:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                assert self.transport is not None
                self.transport.close()
                return
        if pos < n:
            self._buf = data[pos:]


# -- measurement ----------------------------------------------------------------------------------


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}  # type: ignore[dict-item]
    values.sort()
    n = len(values)
    return {"p50_ms": round(values[n // 2] * 1e3, 2), "p99_ms": round(values[min(n - 1, int(n * 0.99))] * 1e3, 2),
            "max_ms": round(values[-1] * 1e3, 2)}


class Tracker:
    """Counts deliveries of stamped events: per event, per client order, latencies."""

    def __init__(self, ordered: bool = True) -> None:
        self.ordered = ordered
        self.expected: dict[int, int] = {}
        self.sent_at: dict[int, float] = {}
        self.count: dict[int, int] = {}
        self.last_at: dict[int, float] = {}
        self.latencies: list[float] = []
        self.deliveries = 0
        self.duplicates = 0
        self.completed = 0
        self.progress = asyncio.Event()
        self.other = 0
        self.first_publish = 0.0
        self.last_delivery = 0.0

    def expect(self, seq: int, recipients: int) -> None:
        self.expected[seq] = recipients
        self.count[seq] = 0
        self.sent_at[seq] = _now()
        if not self.first_publish:
            self.first_publish = self.sent_at[seq]

    def sink(self, client: Client, payload: bytes, now: float) -> None:
        m = MARK.search(payload)
        if m is None:
            self.other += 1
            return
        seq = int(m.group(1))
        if self.ordered:
            if seq <= client.last_seq or seq not in self.count:
                self.duplicates += 1
                return
            client.last_seq = seq
        else:
            if seq in client.seen or seq not in self.count:
                self.duplicates += 1
                return
            client.seen.add(seq)
        self.latencies.append(now - int(m.group(2)) / 1e6)
        self.deliveries += 1
        self.last_delivery = now
        c = self.count[seq] + 1
        self.count[seq] = c
        if c == self.expected[seq]:
            self.last_at[seq] = now
            self.completed += 1
            self.progress.set()

    async def next_progress(self, timeout: float) -> bool:
        """Wait for the next completed event; False when none completes within ``timeout`` (a stall)."""
        self.progress.clear()
        try:
            await asyncio.wait_for(self.progress.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def drain(self, published: int, timeout: float) -> bool:
        deadline = _now() + timeout
        while self.completed < published:
            left = deadline - _now()
            if left <= 0:
                return False
            self.progress.clear()
            try:
                await asyncio.wait_for(self.progress.wait(), left)
            except asyncio.TimeoutError:
                return False
        return True

    def summary(self) -> dict[str, Any]:
        expected = sum(self.expected.values())
        reach = [self.last_at[s] - self.sent_at[s] for s in self.last_at]
        span = (self.last_delivery - self.first_publish) if self.deliveries else 0.0
        out: dict[str, Any] = {
            "events": len(self.expected),
            "deliveries": self.deliveries,
            "lost": expected - self.deliveries,
            "duplicates": self.duplicates,
            "span_s": round(span, 3),
            "deliveries_per_s": round(self.deliveries / span) if span > 0 else None,
        }
        out.update(percentiles(self.latencies))
        r = percentiles(reach)
        out["reach_all_p50_ms"], out["reach_all_max_ms"] = r["p50_ms"], r["max_ms"]
        return out


class Redis:
    """A bare RESP publisher (replies counted, not awaited one by one)."""

    def __init__(self) -> None:
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.replies: list[int] = []
        self._task: asyncio.Task[None] | None = None

    async def connect(self, port: int) -> None:
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", port)
        self._task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self._reader is not None
        while True:
            line = await self._reader.readline()
            if not line:
                return
            if line[:1] == b":":
                self.replies.append(int(line[1:]))

    def publish(self, channel: str, payload: bytes) -> None:
        c = channel.encode()
        assert self._writer is not None
        self._writer.write(b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(c), c, len(payload), payload))

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._task is not None:
            self._task.cancel()


# -- the run --------------------------------------------------------------------------------------


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.pids: list[int] = args.server_pid
        self.clients: list[Client] = []
        self.redis = Redis()
        self.seq = 0
        self.channel_tree = f"{args.prefix}.topic.pydio.tree.nodes.changes"
        self.results: dict[str, Any] = {"server": args.server, "n": args.n}
        self.by_ws: list[list[Client]] = []  # the last selective grouping (``_resubscribe``)

    def sample(self) -> tuple[float, int, float]:
        self.loader_cpu = time.process_time()
        return proc_cpu(self.pids), proc_rss_kb(self.pids), _now()

    def phase_hook(self, state: str) -> None:
        """``--phase-hook`` with ``{state}`` replaced by ``state`` (``on`` as the floor's measured window opens, ``off``
        once it closed), run to its end: ``bench/storm_ir.py --scenario floor`` switches callgrind so."""
        if self.args.phase_hook:
            subprocess.run(shlex.split(self.args.phase_hook.format(state=state)), check=True, timeout=60)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    # connection ----------------------------------------------------------------

    async def open_client(self, idx: int, path: str, tok: str, sink: Callable[..., None],
                          rcvbuf: int = 0) -> Client:
        loop = asyncio.get_running_loop()
        ports = self.args.port
        port = ports[idx % len(ports)]
        host = self.args.host
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await loop.sock_connect(sock, (host, port))
        _, client = await loop.create_connection(lambda: Client(idx, f"{host}:{port}", path, sink), sock=sock)
        await client.opened
        client.subscribed = loop.create_future()
        client.send_text(json.dumps({"@type": "subscribe", "jwt": tok}).encode())
        await client.subscribed
        return client

    def subscribing_sink(self, client: Client, payload: bytes, now: float) -> None:
        if payload.startswith(b'{"@type":"subscribed"') and client.subscribed is not None \
                and not client.subscribed.done():
            client.subscribed.set_result(None)
        elif payload.startswith(b'{"@type":"error"') and client.subscribed is not None \
                and not client.subscribed.done():
            client.subscribed.set_exception(ConnectionError(payload.decode(errors="replace")))

    async def storm(self) -> None:
        """All N clients connect and subscribe at once."""
        n = self.args.n
        tokens = [token(f"u{i}", [BROADCAST_WS]) for i in range(n)]
        gc.collect()
        cpu0, rss0, t0 = self.sample()
        self.results["rss_before_kb"] = rss0
        results = await asyncio.gather(
            *(asyncio.wait_for(self.open_client(i, "/ws", tokens[i], self.subscribing_sink), 60) for i in range(n)),
            return_exceptions=True,
        )
        cpu1, rss1, t1 = self.sample()
        self.clients = [c for c in results if isinstance(c, Client)]
        errors = [r for r in results if not isinstance(r, Client)]
        kinds: dict[str, int] = {}
        for e in errors:
            kinds[type(e).__name__ + ": " + str(e)[:80]] = kinds.get(type(e).__name__ + ": " + str(e)[:80], 0) + 1
        self.results["storm"] = {
            "subscribed": len(self.clients), "failed": len(errors), "errors": kinds,
            "time_to_all_s": round(t1 - t0, 3), "subscribes_per_s": round(len(self.clients) / (t1 - t0)),
            "server_cpu_s": round(cpu1 - cpu0, 2),
        }
        await asyncio.sleep(1.0)
        cpu2, rss2, _ = self.sample()
        self.results["idle"] = {"rss_kb": rss2, "kb_per_connection": round((rss2 - rss0) / max(1, len(self.clients)), 2)}

    async def hold(self) -> None:
        """Keep the sockets open, idle, for ``--hold`` seconds (memory inspection from outside)."""
        await asyncio.sleep(self.args.hold)

    # broadcast -----------------------------------------------------------------

    async def _broadcast(self, name: str, *, duration: float, rate: float = 0.0, window: int = 8, pad: int = 0,
                         exclude: set[int] | None = None) -> dict[str, Any]:
        """Publish node events to the broadcast workspace: flood (``window`` in flight) or at ``rate``/s."""
        tracker = Tracker()
        receivers = [c for c in self.clients if not c.lost and (exclude is None or c.idx not in exclude)]
        for c in self.clients:
            c.sink = tracker.sink
        recipients = len(receivers)
        cpu0, rss0, t0 = self.sample()
        loader_cpu0 = self.loader_cpu
        published = 0
        t_end = t0 + duration
        stalled = False
        rss_max = rss0
        next_rss = t0 + 0.5
        if rate:
            interval = 1.0 / rate
            t_next = t0
            while _now() < t_end:
                seq = self.next_seq()
                tracker.expect(seq, recipients)
                self.redis.publish(self.channel_tree, node_event(seq, "pydiods1/bench", pad))
                published += 1
                t_next += interval
                await asyncio.sleep(max(0.0, t_next - _now()))
        else:
            while _now() < t_end:
                while published - tracker.completed < window:
                    seq = self.next_seq()
                    tracker.expect(seq, recipients)
                    self.redis.publish(self.channel_tree, node_event(seq, "pydiods1/bench", pad))
                    published += 1
                if not await tracker.next_progress(10):
                    stalled = True
                    break
                if _now() >= next_rss:
                    rss_max = max(rss_max, proc_rss_kb(self.pids))
                    next_rss = _now() + 0.5
        complete = await tracker.drain(published, 10)
        cpu1, rss1, t1 = self.sample()
        loader_cpu = self.loader_cpu - loader_cpu0
        out = tracker.summary()
        cpu = cpu1 - cpu0
        out.update({
            "loader_cpu_s": round(loader_cpu, 3),
            "loader_cpu_us_per_frame": round(loader_cpu / tracker.deliveries * 1e6, 2) if tracker.deliveries else None,
            "recipients": recipients, "stalled": stalled or not complete,
            "server_cpu_s": round(cpu, 3),
            "cpu_us_per_delivery": round(cpu / tracker.deliveries * 1e6, 2) if tracker.deliveries else None,
            "deliveries_per_cpu_s": round(tracker.deliveries / cpu) if cpu > 0 else None,
            "cpu_us_per_event": round(cpu / published * 1e6, 1) if published else None,
            "rss_kb_start": rss0, "rss_kb_end": rss1, "rss_kb_max": max(rss_max, rss1),
        })
        return out

    async def single(self) -> None:
        """Isolated events (the next one published after the previous reached everyone): time to reach all."""
        tracker = Tracker()
        for c in self.clients:
            c.sink = tracker.sink
        recipients = len([c for c in self.clients if not c.lost])
        cpu0, _, _ = self.sample()
        for _ in range(self.args.single_events):
            seq = self.next_seq()
            tracker.expect(seq, recipients)
            self.redis.publish(self.channel_tree, node_event(seq, "pydiods1/bench"))
            await tracker.drain(tracker.completed + 1, 10)
            await asyncio.sleep(0.3)
        cpu1, _, _ = self.sample()
        out = tracker.summary()
        out["server_cpu_s"] = round(cpu1 - cpu0, 3)
        self.results["single"] = out

    async def paced(self) -> None:
        self.results["paced"] = await self._broadcast("paced", duration=self.args.paced_duration,
                                                      rate=self.args.paced_rate)

    async def flood(self) -> None:
        self.results["flood"] = await self._broadcast("flood", duration=self.args.duration,
                                                      window=self.args.window)

    async def slow(self) -> None:
        """The flood with padded events, without and then with one client that stops reading."""
        pad = self.args.slow_pad
        ref = await self._broadcast("slow-ref", duration=self.args.slow_duration, window=self.args.window, pad=pad)
        # The slow client: a fresh socket with a tiny receive buffer that never reads.
        slow = await self.open_client(len(self.clients) + 1000000, "/ws",
                                      token("slowpoke", [BROADCAST_WS]),
                                      self.subscribing_sink, rcvbuf=4096)
        assert slow.transport is not None
        slow.transport.pause_reading()
        self.clients.append(slow)
        run = await self._broadcast("slow", duration=self.args.slow_duration, window=self.args.window, pad=pad,
                                    exclude={slow.idx})
        # Read what reached the slow client: its stream ends with the close frame if the server closed it.
        slow.sink = lambda c, p, now: None
        slow.transport.resume_reading()
        deadline = _now() + 5
        while not slow.lost and _now() < deadline:
            await asyncio.sleep(0.05)
        run["slow_client_close_code"] = slow.close_code
        run["slow_client_disconnected"] = slow.lost
        run["ref"] = ref
        self.clients.remove(slow)
        if not slow.lost and slow.transport is not None:
            slow.transport.abort()
        self.results["slow"] = run

    # selective -----------------------------------------------------------------

    async def _resubscribe(self, groups: int) -> list[list[Client]]:
        """Subscribe again, client i in workspace i % groups; returns the clients of each workspace."""
        by_ws: list[list[Client]] = [[] for _ in range(groups)]
        futures = []
        loop = asyncio.get_running_loop()
        for c in self.clients:
            if c.lost:
                continue
            w = c.idx % groups
            by_ws[w].append(c)
            c.sink = self.subscribing_sink
            c.subscribed = loop.create_future()
            ws = workspace(f"ws-sel-{w}", f"sel{w}", f"pydiods1/sel/w{w}")
            c.send_text(json.dumps({"@type": "subscribe", "jwt": token(f"u{c.idx}", [ws])}).encode())
            futures.append(c.subscribed)
        await asyncio.wait_for(asyncio.gather(*futures), 60)
        self.by_ws = by_ws
        return by_ws

    async def _selective(self, groups: int, hot: int) -> dict[str, Any]:
        by_ws = await self._resubscribe(groups)
        await asyncio.sleep(0.5)
        tracker = Tracker()
        for c in self.clients:
            c.sink = tracker.sink
        rate = self.args.selective_rate
        duration = self.args.selective_duration
        cpu0, rss0, t0 = self.sample()
        split0 = proc_cpu_split(self.pids)
        t_end = t0 + duration
        published = 0
        tick = 0.01
        per_tick = max(1, int(rate * tick))
        t_next = t0
        rnd = random.Random(4)
        hot = min(hot, groups)  # fewer sessions than hot workspaces (--n under 1,000): those that exist
        while _now() < t_end:
            for _ in range(per_tick):
                w = rnd.randrange(hot)
                seq = self.next_seq()
                tracker.expect(seq, len(by_ws[w]))
                self.redis.publish(self.channel_tree, node_event(seq, f"pydiods1/sel/w{w}"))
                published += 1
            t_next += tick
            await asyncio.sleep(max(0.0, t_next - _now()))
        complete = await tracker.drain(published, 10)
        cpu1, rss1, t1 = self.sample()
        split1 = proc_cpu_split(self.pids)
        out = tracker.summary()
        cpu = cpu1 - cpu0
        out.update({
            "user_us_per_event": round((split1[0] - split0[0]) / published * 1e6, 1) if published else None,
            "sys_us_per_event": round((split1[1] - split0[1]) / published * 1e6, 1) if published else None,
            "workspaces": groups, "events_per_s": round(published / duration),
            "recipients_per_event": round(tracker.deliveries / max(1, published), 2),
            "stalled": not complete, "server_cpu_s": round(cpu, 3),
            "cpu_us_per_event": round(cpu / published * 1e6, 1) if published else None,
            "cpu_us_per_delivery": round(cpu / tracker.deliveries * 1e6, 2) if tracker.deliveries else None,
        })
        return out

    async def selective(self) -> None:
        # 1,000 workspaces (--selective-groups): N/1000 recipients per event.
        groups = self.args.selective_groups
        self.results["selective"] = await self._selective(groups, groups)
        # One workspace per session, events to 1,000 of them: one recipient per event whatever N.
        self.results["selective_one"] = await self._selective(len(self.clients), 1000)

    async def floor(self) -> None:
        """Events nobody receives: server CPU per event for reading, parsing and routing an event to no one.

        The events (the selective shape and rate, under a root no session has) follow the last selective
        grouping (one workspace per session when no selective phase ran). One last event to the first
        workspace, published after them on the same channel, closes the phase: once it has arrived, the
        server has read every event before it. Its delivery is the phase's only one (``stray_deliveries``
        counts any other).
        """
        by_ws = self.by_ws or await self._resubscribe(len(self.clients))
        await asyncio.sleep(0.5)
        tracker = Tracker()
        for c in self.clients:
            c.sink = tracker.sink
        rate = self.args.selective_rate
        duration = self.args.selective_duration
        self.phase_hook("on")
        cpu0, _, t0 = self.sample()
        split0 = proc_cpu_split(self.pids)
        t_end = t0 + duration
        published = 0
        tick = 0.01
        per_tick = max(1, int(rate * tick))
        t_next = t0
        while _now() < t_end:
            for _ in range(per_tick):
                seq = self.next_seq()
                tracker.expect(seq, 0)
                self.redis.publish(self.channel_tree, node_event(seq, "pydiods1/nobody"))
                published += 1
            t_next += tick
            await asyncio.sleep(max(0.0, t_next - _now()))
        last = self.next_seq()
        tracker.expect(last, len(by_ws[0]))
        self.redis.publish(self.channel_tree, node_event(last, "pydiods1/sel/w0"))
        complete = await tracker.drain(1, 10)
        self.phase_hook("off")
        cpu1, _, _ = self.sample()
        split1 = proc_cpu_split(self.pids)
        cpu = cpu1 - cpu0
        self.results["floor"] = {
            "user_us_per_event": round((split1[0] - split0[0]) / published * 1e6, 1) if published else None,
            "sys_us_per_event": round((split1[1] - split0[1]) / published * 1e6, 1) if published else None,
            "events": published, "events_per_s": round(published / duration), "stalled": not complete,
            "stray_deliveries": tracker.deliveries - tracker.count[last], "server_cpu_s": round(cpu, 3),
            "cpu_us_per_event": round(cpu / published * 1e6, 1) if published else None,
        }

    # chat ----------------------------------------------------------------------

    async def chat(self) -> None:
        """A room of 100 members on /chat; posts flood with ``window`` in flight, each must reach all."""
        members = self.args.chat_members
        room_key = f"bench-{os.getpid()}-{int(time.time())}"
        gateway = self.args.server == "gateway"
        tokens = [token(f"chat{i}", [BROADCAST_WS]) for i in range(members)]
        clients = await asyncio.gather(*(self.open_client(2000000 + i, "/chat", tokens[i], self.subscribing_sink)
                                         for i in range(members)))
        room_uuid: dict[str, str] = {}
        joined = asyncio.get_running_loop().create_future()
        seen_updates = [0]

        def join_sink(client: Client, payload: bytes, now: float) -> None:
            if b'"ROOM_UPDATE"' in payload:
                seen_updates[0] += 1
                doc = json.loads(payload)
                room_uuid.setdefault("uuid", doc["Room"]["Uuid"])
                if len(doc["Room"].get("Users") or []) == members and not joined.done():
                    joined.set_result(None)

        for c in clients:
            c.sink = join_sink
            c.send_text(json.dumps({"@type": "JOIN", "Room": {"Type": "GLOBAL", "RoomTypeObject": room_key}}
                                   ).encode())
        if gateway:
            await asyncio.wait_for(joined, 30)
        await asyncio.sleep(0.3)  # (the baselines do not answer a JOIN)
        tracker = Tracker(ordered=False)  # posts from several sockets: no order between posters
        for c in clients:
            c.sink = tracker.sink
        cpu0, _, t0 = self.sample()
        t_end = t0 + self.args.chat_duration
        published = 0
        window = self.args.window
        stalled = False
        while _now() < t_end:
            while published - tracker.completed < window:
                seq = self.next_seq()
                tracker.expect(seq, members)
                poster = clients[seq % members]
                text = f"bench:{seq}:{int(_now() * 1e6)}"
                if gateway:
                    frame = {"@type": "POST", "Message": {"RoomUuid": room_uuid["uuid"], "Message": text}}
                else:
                    frame = {"@type": "POST", "Message": {"Message": text}}
                poster.send_text(json.dumps(frame).encode())
                published += 1
            if not await tracker.next_progress(10):
                stalled = True
                break
        complete = await tracker.drain(published, 10)
        cpu1, _, t1 = self.sample()
        out = tracker.summary()
        out.update({"members": members, "posts_per_s": round(published / (t1 - t0)),
                    "stalled": stalled or not complete, "server_cpu_s": round(cpu1 - cpu0, 3)})
        self.results["chat"] = out
        for c in clients:
            if c.transport is not None:
                c.transport.abort()

    async def main(self) -> None:
        await self.redis.connect(self.args.redis_port)
        try:
            for name in self.args.scenarios.split(","):
                t = _now()
                await getattr(self, name)()
                print(f"loadgen {self.args.server} N={self.args.n}: {name} done in {_now() - t:.1f} s",
                      file=sys.stderr, flush=True)
        finally:
            for c in self.clients:
                if c.transport is not None:
                    c.transport.abort()  # RST: no TIME_WAIT left behind for the next run
            await self.redis.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", required=True, choices=["gateway", "autobahn", "node", "go"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, action="append", required=True)
    p.add_argument("--server-pid", type=int, action="append", required=True)
    p.add_argument("--redis-port", type=int, required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--scenarios", default="storm,paced,flood")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--window", type=int, default=0, help="events in flight in a flood (default: 8,000 / N, >= 2)")
    p.add_argument("--paced-rate", type=float, default=10.0)
    p.add_argument("--paced-duration", type=float, default=3.0)
    p.add_argument("--slow-duration", type=float, default=4.0, help="each of the two phases: without, then "
                   "with the slow client")
    p.add_argument("--slow-pad", type=int, default=4096)
    p.add_argument("--selective-rate", type=float, default=1000.0)
    p.add_argument("--selective-duration", type=float, default=3.0)
    p.add_argument("--selective-groups", type=int, default=1000, help="workspaces of the first selective phase "
                   "(N / groups recipients per event; the issue's 10 recipients at N = 1,000: 100)")
    p.add_argument("--chat-members", type=int, default=100)
    p.add_argument("--chat-duration", type=float, default=3.0)
    p.add_argument("--hold", type=float, default=10.0)
    p.add_argument("--single-events", type=int, default=5)
    p.add_argument("--phase-hook", default="", help="a command run as the floor's window opens and closes "
                   "({state}: on, off)")
    p.add_argument("--out", default="-")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.window:
        args.window = max(2, 8000 // args.n)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    run = Run(args)
    try:
        import uvloop
    except ImportError:
        print("loadgen: uvloop not installed, using the default asyncio loop", file=sys.stderr)
        asyncio.run(run.main())
    else:
        uvloop.run(run.main())
    text = json.dumps(run.results)
    if args.out == "-":
        print(text)
    else:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
