"""The soak's bulk and hostile phases (issue 11), run by ``tests/soak.py`` while the normal sessions churn.

Each cycle of the soak runs, one after another and again while its churn time lasts:

- **bulk burst** (PROTOCOL.md §4.1, per-session pacing): ``SOAK_BURST_EVENTS`` (12,000) DELETE events of one
  workspace (``ds/w1000``, which no churned session holds) are published at once; each of
  ``SOAK_BURST_READERS`` prompt readers (``BurstReader``: subscribed to that workspace for the whole cycle,
  reading everything at once) must get every one of them, in order, and stay open. Time to the last event
  is measured from the first publish, per reader.
- **ping flood** (§4 "every limit"): fast flooders open ``/ws`` and send ping frames as fast as the socket
  takes them, never reading; each must end closed 4029 (the inbound flood limit) or dropped, never stay
  open; a new one replaces it while the flood lasts. Slow pingers subscribe, then ping under the inbound
  rate and never read: the server's own keepalive must drop them (``ping_interval`` + ``pong_timeout``). The
  daemon's RSS through the phase must stay within ``SOAK_FLOOD_RSS_MIB`` of its value before.
- **half-open handshakes** (§1, listener notes): ``max_connections_per_ip`` + ``HALF_OPEN_EXTRA`` sockets from
  one address send an upgrade request one header line every ``TRICKLE`` seconds and never its end: those
  past the per-address cap must be answered 429 at once, the others 408 at ``[server] handshake_timeout``,
  and all closed; ``wsgw_connections_refused_total{listener="public",limit}`` must count exactly these.

Throughout the churn, ``Health`` asks the operator listener's ``/healthz`` and ``/metrics`` every second on a
fresh connection: every answer must be a 200 within ``HEALTH_TIMEOUT``. Every client is on loopback, every
wait is bounded.
"""

from __future__ import annotations

import json
import os
import struct
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import treq
import txredisapi
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import reactor as _reactor
from twisted.internet import task
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool
from zope.interface import implementer

from tests.support.rawtcp import UPGRADE, client_frame

reactor: Any = _reactor

BURST_WS = 1000  # the bulk burst's workspace (ds/w1000): no churned session holds it
QUIET_WS = 1001  # the slow pingers' workspace: no event is ever published to it
READER_SOURCE = "127.0.0.20"
FLOOD_SOURCE = "127.0.0.30"
PINGER_SOURCE = "127.0.0.31"
HALF_OPEN_SOURCE = "127.0.0.40"
HALF_OPEN_EXTRA = 50  # half-open sockets beyond the per-address cap: each must get 429
TRICKLE = 3.0  # seconds between the header lines of a half-open handshake
HEALTH_TIMEOUT = 5.0
PING = client_frame(0x9, b"p" * 125)  # the largest control frame (RFC 6455 §5.5)


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def now() -> float:
    return float(reactor.seconds())


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def until(predicate: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    """Poll ``predicate`` (sync or async) until it is truthy or ``timeout`` passes; returns its last value."""
    deadline = now() + timeout
    while True:
        value = predicate()
        if isinstance(value, (Deferred, Awaitable)):
            value = await value
        if value or now() >= deadline:
            return value
        await sleep(interval)


def proc_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


async def metric(admin_port: int, name: str) -> dict[str, float]:
    """The samples of one metric family from /metrics, by label text (``"_"`` for a sample without labels)."""
    text = await (await treq.get(f"http://127.0.0.1:{admin_port}/metrics", timeout=30)).text()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == name or key.startswith(name + "{"):
            samples[key[len(name):] or "_"] = float(value)
    return samples


def gc_over(text: str, family: str, le: str = "0.05") -> dict[str, int]:
    """From a /metrics text, the collections of one wsgw.gcpolicy histogram (``wsgw_gc_pause_seconds``: wall
    clock, ``wsgw_gc_pause_cpu_seconds``: CPU time) longer than ``le`` seconds (a bucket bound), by generation."""
    buckets: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key.startswith(family + "_bucket{"):
            labels = dict(pair.split("=", 1) for pair in key[len(family) + 8:-1].split(","))
            buckets[labels["generation"].strip('"'), labels["le"].strip('"')] = float(value)
    return {g: int(buckets[g, "+Inf"] - buckets.get((g, le), 0.0)) for g, bound in buckets if bound == "+Inf"}


def refused(samples: dict[str, float], limit: str, listener: str = "public") -> int:
    """The ``wsgw_connections_refused_total`` count of one listener and limit (labels in any order)."""
    wanted = {f'listener="{listener}"', f'limit="{limit}"'}
    return int(sum(v for k, v in samples.items() if set(k.strip("{}").split(",")) == wanted))


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The (opcode, payload) of the whole unmasked server frames in ``data`` (what follows the 101 answer)."""
    frames, at = [], 0
    while at + 2 <= len(data):
        opcode, length = data[at] & 0x0F, data[at + 1] & 0x7F
        at += 2
        if length == 126:
            if at + 2 > len(data):
                break
            (length,) = struct.unpack("!H", data[at:at + 2])
            at += 2
        elif length == 127:
            if at + 8 > len(data):
                break
            (length,) = struct.unpack("!Q", data[at:at + 8])
            at += 8
        if at + length > len(data):
            break
        frames.append((opcode, bytes(data[at:at + length])))
        at += length
    return frames


# --------------------------------------------------------------------------- raw sockets


@implementer(IPushProducer)
class RawPeer(Protocol):
    """A raw TCP client: keeps the first ``keep`` bytes it reads, notes when it first read and when it was closed;
    as the producer of its own writes it knows when the transport's buffer is full (``writable``)."""

    transport: Any

    def __init__(self, keep: int = 1 << 20) -> None:
        self.data = bytearray()
        self.keep = keep
        self.connected_at: float | None = None
        self.first_data_at: float | None = None
        self.lost_at: float | None = None
        self.writable = True
        self.written = 0

    def connectionMade(self) -> None:
        self.connected_at = now()

    def dataReceived(self, data: bytes) -> None:
        if self.first_data_at is None:
            self.first_data_at = now()
        room = self.keep - len(self.data)
        if room > 0:
            self.data += data[:room]

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost_at = now()

    def write(self, data: bytes) -> None:
        if self.lost_at is None:
            self.transport.write(data)
            self.written += len(data)

    def pauseProducing(self) -> None:
        self.writable = False

    def resumeProducing(self) -> None:
        self.writable = True

    def stopProducing(self) -> None:
        self.writable = False

    def stop_reading(self) -> None:
        """Never read again (until ``start_reading``): what the server writes piles up in the kernel."""
        self.transport.pauseProducing()
        self.transport.registerProducer(self, True)

    def start_reading(self) -> None:
        self.transport.resumeProducing()

    def abort(self) -> None:
        if self.lost_at is None:
            self.transport.abortConnection()

    def header_end(self) -> int:
        """Where the HTTP answer's header ends (-1 while it has not)."""
        end = self.data.find(b"\r\n\r\n")
        return end + 4 if end >= 0 else -1


async def connect_raw(port: int, source: str, peer: RawPeer) -> RawPeer:
    endpoint = clientFromString(reactor, f"tcp:127.0.0.1:{port}:timeout=10:bindAddress={source}")
    await connectProtocol(endpoint, peer).addTimeout(15, reactor)
    return peer


# --------------------------------------------------------------------------- prompt readers


class BurstReader(WebSocketClientProtocol):
    """A prompt reader of the burst workspace for the whole cycle: checks that each burst arrives whole, in order."""

    scenarios: Scenarios
    token: str

    def __init__(self) -> None:
        super().__init__()
        self.subscribed = False
        self.leaving = False
        self.close_code: tuple[int | None, str | None] | None = None
        self.burst = 0
        self.next = 0  # the index of the event expected next in this burst
        self.received = 0
        self.out_of_order = 0
        self.last_at: float | None = None
        self.other_frames: Counter[str] = Counter()

    def onOpen(self) -> None:
        self.sendMessage(json.dumps({"@type": "subscribe", "jwt": self.token}).encode())

    def start_burst(self, number: int) -> None:
        self.burst, self.next, self.received, self.out_of_order, self.last_at = number, 0, 0, 0, None

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        frame = json.loads(payload)
        if frame.get("@type") == "subscribed":
            self.subscribed = True
            return
        node = frame.get("Source") or {}
        burst, _, index = node.get("Uuid", "").partition("-")
        if frame.get("Type") != "DELETE" or burst != f"d{self.burst}":
            self.other_frames[str(frame.get("@type") or frame.get("Type") or "?")] += 1
            return
        self.received += 1
        if int(index) != self.next:
            self.out_of_order += 1
        self.next = int(index) + 1
        if self.received == self.scenarios.burst_events:
            self.last_at = now()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.close_code = (code, reason)


# --------------------------------------------------------------------------- the operator listener


class Health:
    """Asks /healthz and /metrics on the operator listener every second on a fresh connection; by phase, the
    answers (``ok`` or what went wrong) and the slowest one."""

    def __init__(self, admin_port: int) -> None:
        self._base = f"http://127.0.0.1:{admin_port}"
        self._pool = HTTPConnectionPool(reactor, persistent=False)
        self.phase = "churn"
        self.answers: Counter[str] = Counter()
        self.slowest: dict[str, float] = {}
        # wall-clock GC pauses over 50 ms as they appear in /metrics: (time, phase, how many more since the last
        # answer, the machine's 1-minute load average then); see gc_over
        self.slow_gc: list[tuple[float, str, int, float]] = []
        self._slow_gc_seen = 0
        self._running = False
        self._done: Deferred[None] | None = None

    def start(self) -> None:
        self._running = True
        self._done = ensureDeferred(self._loop())

    async def stop(self) -> None:
        self._running = False
        if self._done is not None:
            await self._done

    async def _loop(self) -> None:
        while self._running:
            for path in ("/healthz", "/metrics"):
                await self._ask(path)
            await sleep(1.0)

    async def _ask(self, path: str) -> None:
        started, phase = now(), self.phase
        try:
            response = await treq.get(self._base + path, timeout=HEALTH_TIMEOUT, pool=self._pool)
            body = await response.content()
            outcome = "ok" if response.code == 200 else f"{response.code}"
            if path == "/metrics" and response.code == 200:
                self._note_slow_gc(body.decode(errors="replace"))
        except Exception as e:  # noqa: BLE001 - any failure is an outcome to report
            outcome = type(e).__name__
        took = now() - started
        self.answers[f"{phase} {path} {outcome}"] += 1
        key = f"{phase} {path}"
        self.slowest[key] = max(self.slowest.get(key, 0.0), took)

    def _note_slow_gc(self, text: str) -> None:
        over = sum(gc_over(text, "wsgw_gc_pause_seconds").values())
        if over > self._slow_gc_seen:
            self.slow_gc.append((now(), self.phase, over - self._slow_gc_seen, os.getloadavg()[0]))
            self._slow_gc_seen = over

    @property
    def failures(self) -> dict[str, int]:
        return {k: v for k, v in self.answers.items() if not k.endswith(" ok")}


# --------------------------------------------------------------------------- the phases


class Scenarios:
    """The bulk and hostile phases of the soak, their figures (``results``) and checks (through ``check``)."""

    def __init__(self, *, port: int, admin_port: int, redis_port: int, channel: str, daemon_pid: int,
                 per_ip: int, handshake_timeout: float, keepalive: float, mint: Callable[[str, list[int]], str],
                 check: Callable[[bool, str], None], say: Callable[[str], None]) -> None:
        self.port = port
        self.admin_port = admin_port
        self.redis_port = redis_port
        self.channel = channel  # the tree topic's Redis channel
        self.daemon_pid = daemon_pid
        self.per_ip = per_ip
        self.handshake_timeout = handshake_timeout
        self.keepalive = keepalive  # ping_interval + pong_timeout: a peer that never pongs is dropped by then
        self.mint = mint
        self.check = check
        self.say = say
        self.burst_events = int(env_float("SOAK_BURST_EVENTS", 12000))
        self.reader_count = int(env_float("SOAK_BURST_READERS", 4))
        self.flood_seconds = env_float("SOAK_FLOOD_SECONDS", 12)
        self.flooders = int(env_float("SOAK_FLOODERS", 8))
        self.pingers = int(env_float("SOAK_PINGERS", 8))
        self.flood_rss_kb = int(env_float("SOAK_FLOOD_RSS_MIB", 32) * 1024)
        self.health = Health(admin_port)
        self.readers: list[BurstReader] = []
        self.rss: list[tuple[float, str, int]] = []  # (time, phase, daemon RSS in kB), every half second
        self.results: dict[str, list[dict[str, Any]]] = {"burst": [], "flood": [], "half-open": []}
        self._redis: Any = None
        self._bursts = 0
        self._sampler = task.LoopingCall(self._sample)
        factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}/ws")
        factory.protocol = BurstReader
        factory.setProtocolOptions(maxMessagePayloadSize=0, maxFramePayloadSize=0, openHandshakeTimeout=30,
                                   closeHandshakeTimeout=10)
        self._reader_factory = factory

    @property
    def extra_sockets(self) -> int:
        """Client sockets the phases hold at most (for the open-file limit)."""
        return self.reader_count + 2 * self.flooders + self.pingers + self.per_ip + HALF_OPEN_EXTRA

    def _sample(self) -> None:
        self.rss.append((now(), self.health.phase, proc_rss_kb(self.daemon_pid)))

    def set_phase(self, name: str) -> None:
        self.health.phase = name
        self._sample()

    async def start(self) -> None:
        if self._redis is None:
            self._redis = await txredisapi.Connection("127.0.0.1", self.redis_port, reconnect=False)
        if not self._sampler.running:
            self._sampler.start(0.5)
        self.health.start()

    async def stop(self) -> None:
        await self.health.stop()
        if self._sampler.running:
            self._sampler.stop()
        if self._redis is not None:
            await self._redis.disconnect()
            self._redis = None

    # -- the prompt readers, one set per cycle ---------------------------

    async def open_readers(self, cycle: int) -> None:
        self.readers = []
        for i in range(self.reader_count):
            proto: Any = self._reader_factory.buildProtocol(None)
            proto.scenarios = self
            proto.token = self.mint(f"reader{cycle}-{i}", [BURST_WS])
            endpoint = clientFromString(reactor, f"tcp:127.0.0.1:{self.port}:timeout=10:bindAddress={READER_SOURCE}")
            await connectProtocol(endpoint, proto).addTimeout(15, reactor)
            self.readers.append(proto)
        subscribed = await until(lambda: all(r.subscribed for r in self.readers), 30)
        self.check(bool(subscribed), f"cycle {cycle}: {self.reader_count} prompt readers subscribed")

    async def close_readers(self, cycle: int) -> None:
        closed_early = [r.close_code for r in self.readers if r.close_code is not None]
        self.check(not closed_early, f"cycle {cycle}: no prompt reader was closed by the server "
                                     f"({closed_early or 'none was'})")
        for r in self.readers:
            r.leaving = True
            if r.close_code is None:
                r.sendClose(1000)
        await until(lambda: all(r.close_code is not None for r in self.readers), 15)
        self.readers = []

    # -- the schedule ----------------------------------------------------

    async def run(self, end: float) -> None:
        """Run burst, flood and half-open phases in turn (5 s apart) while each still fits before ``end``."""
        phases: list[tuple[float, Callable[[], Awaitable[None]]]] = [
            (15.0, self.burst), (self.flood_seconds + 8, self.flood), (self.handshake_timeout + 6, self.half_open)]
        while True:
            for expected, phase in phases:
                if now() + 5 + expected > end:
                    return
                await sleep(5)
                await phase()
                self.set_phase("churn")

    # -- bulk burst ------------------------------------------------------

    async def burst(self) -> None:
        """Publish ``burst_events`` DELETEs of the burst workspace at once; every prompt reader gets all, in order."""
        self._bursts += 1
        number = self._bursts
        self.set_phase("burst")
        for r in self.readers:
            r.start_burst(number)
        events = [json.dumps({"Type": "DELETE", "Source": {"Uuid": f"d{number}-{i}", "Type": "LEAF",
                                                             "Path": f"ds/w{BURST_WS}/bulk{number}/f{i:05d}.txt"}})
                  for i in range(self.burst_events)]
        started = now()
        await DeferredList([self._redis.publish(self.channel, e) for e in events], fireOnOneErrback=True,
                           consumeErrors=True)
        published = now() - started
        done = await until(lambda: all(r.last_at is not None or r.close_code is not None for r in self.readers),
                           60, 0.05)
        readers = [{"received": r.received, "out_of_order": r.out_of_order, "closed": r.close_code,
                    "time_to_last": (r.last_at - started) if r.last_at is not None else None}
                   for r in self.readers]
        self.results["burst"].append({"number": number, "published_in": published, "readers": readers})
        times = [r["time_to_last"] for r in readers if r["time_to_last"] is not None]
        self.say(f"  burst {number}: {self.burst_events} DELETEs published in {published:.2f} s; readers got "
                 f"{[r['received'] for r in readers]}, out of order {[r['out_of_order'] for r in readers]}, "
                 f"time to last {', '.join(f'{t:.2f}' for t in times)} s")
        whole = all(r["received"] == self.burst_events and r["out_of_order"] == 0 and r["closed"] is None
                    for r in readers)
        self.check(bool(done) and whole, f"burst {number}: every prompt reader got all {self.burst_events} "
                                         "DELETEs, in order, and stayed open")

    # -- ping flood ------------------------------------------------------

    async def flood(self) -> None:
        """Fast flooders (replaced as they are closed) and slow pingers, none of them reading."""
        self.set_phase("flood")
        before = await metric(self.admin_port, "wsgw_server_closes_total")
        rss_before = proc_rss_kb(self.daemon_pid)
        started = now()
        outcomes: Counter[str] = Counter()
        written: list[int] = []
        end = started + self.flood_seconds

        async def fast_slot() -> None:
            while now() < end:
                outcomes[await self._fast_flooder(end, written)] += 1

        pinger_outcomes: Counter[str] = Counter()
        dropped_after: list[float] = []

        async def slow(i: int) -> None:
            outcome, after = await self._slow_pinger(i)
            pinger_outcomes[outcome] += 1
            if after is not None:
                dropped_after.append(after)

        await DeferredList([ensureDeferred(fast_slot()) for _ in range(self.flooders)]
                           + [ensureDeferred(slow(i)) for i in range(self.pingers)], consumeErrors=True)
        after = await metric(self.admin_port, "wsgw_server_closes_total")
        closes_4029 = int(after.get('{code="4029"}', 0) - before.get('{code="4029"}', 0))
        peak = max((rss for t, _, rss in self.rss if t >= started), default=rss_before)
        result = {"fast": dict(outcomes), "slow": dict(pinger_outcomes), "closes_4029": closes_4029,
                  "bytes_written": sum(written), "rss_before_kb": rss_before, "rss_peak_kb": peak,
                  "dropped_after": (min(dropped_after), max(dropped_after)) if dropped_after else None,
                  "seconds": now() - started}
        self.results["flood"].append(result)
        self.say(f"  flood: fast flooders {dict(outcomes)} ({sum(written) / 2**20:.0f} MiB of pings written, 4029 "
                 f"closes in /metrics +{closes_4029}); slow pingers {dict(pinger_outcomes)} after "
                 f"{result['dropped_after']} s; daemon RSS {rss_before / 1024:.1f} -> peak {peak / 1024:.1f} MiB")
        fast_ok = sum(outcomes.values()) > 0 and set(outcomes) <= {"closed 4029", "dropped"}
        self.check(fast_ok, f"flood: every fast flooder was closed 4029 or dropped ({dict(outcomes)})")
        self.check(closes_4029 == sum(outcomes.values()),
                   f"flood: the server closed every fast flooder 4029 (/metrics +{closes_4029}, "
                   f"{sum(outcomes.values())} flooders)")
        self.check(pinger_outcomes == Counter({"dropped": self.pingers}),
                   f"flood: every slow pinger was dropped by the keepalive ({dict(pinger_outcomes)})")
        self.check(peak - rss_before <= self.flood_rss_kb,
                   f"flood: daemon RSS stayed within {self.flood_rss_kb / 1024:.0f} MiB of its value before "
                   f"({(peak - rss_before) / 1024:+.1f} MiB while {sum(written) / 2**20:.0f} MiB of pings were "
                   "written at it)")

    async def _fast_flooder(self, end: float, written: list[int]) -> str:
        peer = RawPeer()
        try:
            await connect_raw(self.port, FLOOD_SOURCE, peer)
        except Exception as e:  # noqa: BLE001
            return f"connect failed: {type(e).__name__}"
        peer.write(UPGRADE)
        await until(lambda: peer.header_end() >= 0 or peer.lost_at is not None, 10, 0.05)
        if not peer.data.startswith(b"HTTP/1.1 101"):
            peer.abort()
            return f"no upgrade: {bytes(peer.data[:12])!r}"
        header = peer.header_end()
        peer.stop_reading()
        chunk = PING * 512  # 67 KiB of pings a write
        stalled_since: float | None = None
        peer.write(chunk)  # at least one chunk, even when the flood's time is up: every flooder floods
        while now() < end and peer.lost_at is None:
            if peer.writable:
                peer.write(chunk)
                stalled_since = None
            elif stalled_since is None:
                stalled_since = now()
            elif now() - stalled_since > 2:
                break  # the server stopped reading
            await sleep(0.005)
        written.append(peer.written)
        peer.start_reading()  # now read whatever the server said, up to its close
        await until(lambda: peer.lost_at is not None, 10, 0.05)
        if peer.lost_at is None:
            peer.abort()
            return "still open"
        closes = [payload for opcode, payload in server_frames(bytes(peer.data[header:])) if opcode == 0x8]
        if closes:
            return f"closed {struct.unpack('!H', closes[0][:2])[0]}" if len(closes[0]) >= 2 else "closed"
        return "dropped"

    async def _slow_pinger(self, i: int) -> tuple[str, float | None]:
        peer = RawPeer()
        try:
            await connect_raw(self.port, PINGER_SOURCE, peer)
        except Exception as e:  # noqa: BLE001
            return f"connect failed: {type(e).__name__}", None
        peer.write(UPGRADE)
        await until(lambda: peer.header_end() >= 0 or peer.lost_at is not None, 10, 0.05)
        if not peer.data.startswith(b"HTTP/1.1 101"):
            peer.abort()
            return "no upgrade", None
        subscribe = json.dumps({"@type": "subscribe", "jwt": self.mint(f"pinger{i}", [QUIET_WS])}).encode()
        peer.write(client_frame(0x1, subscribe))
        peer.stop_reading()
        opened = now()
        deadline = opened + self.keepalive + 8
        while peer.lost_at is None and now() < deadline:
            peer.write(PING)  # 10/s, under the inbound rate: never a 4029
            await sleep(0.1)
        if peer.lost_at is None:
            peer.abort()
            return "still open", None
        return "dropped", peer.lost_at - opened

    # -- half-open handshakes --------------------------------------------

    async def half_open(self) -> None:
        """per_ip + HALF_OPEN_EXTRA sockets from one address trickle an upgrade request that never ends."""
        self.set_phase("half-open")
        count = self.per_ip + HALF_OPEN_EXTRA
        before = await metric(self.admin_port, "wsgw_connections_refused_total")
        peers = [RawPeer(keep=4096) for _ in range(count)]
        started = now()
        connected = await DeferredList([ensureDeferred(connect_raw(self.port, HALF_OPEN_SOURCE, p)) for p in peers],
                                       consumeErrors=True)
        opened_at = {id(p): p.connected_at or started for p, (ok, _) in zip(peers, connected, strict=True) if ok}
        line = 0
        for p in peers:
            p.write(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
        deadline = started + self.handshake_timeout + 10
        while now() < deadline and any(p.lost_at is None for p in peers if id(p) in opened_at):
            await sleep(TRICKLE)
            line += 1
            for p in peers:
                p.write(b"X-Slow-%d: %s\r\n" % (line, b"z" * 32))
        closed_by_server = {id(p): p.lost_at for p in peers if p.lost_at is not None}
        for p in peers:
            p.abort()
        after = await metric(self.admin_port, "wsgw_connections_refused_total")
        answers: Counter[str] = Counter()
        answered_in: dict[str, list[float]] = {"408": [], "429": []}
        closed_in: list[float] = []
        for p in peers:
            if id(p) not in opened_at:
                answers["connect failed"] += 1
                continue
            status = bytes(p.data[9:12]).decode(errors="replace") if p.data.startswith(b"HTTP/1.1 ") else "none"
            answers[status] += 1
            if status in answered_in and p.first_data_at is not None:
                answered_in[status].append(p.first_data_at - opened_at[id(p)])
            if id(p) in closed_by_server:
                closed_in.append(closed_by_server[id(p)] - opened_at[id(p)])
        deltas = {limit: refused(after, limit) - refused(before, limit) for limit in ("per_ip", "handshake_timeout")}
        span = {k: (min(v), max(v)) if v else None for k, v in answered_in.items()}
        result: dict[str, Any] = {"sockets": count, "answers": dict(answers), "answered_in": span,
                  "closed_in": (min(closed_in), max(closed_in)) if closed_in else None, "refused": deltas}
        self.results["half-open"].append(result)
        self.say(f"  half-open: {count} sockets from {HALF_OPEN_SOURCE}: answers {dict(answers)}, 429 in "
                 f"{_span(span['429'])} s, 408 in {_span(span['408'])} s, closed in {_span(result['closed_in'])} s; "
                 f"refused in /metrics +{deltas}")
        self.check(answers == Counter({"408": self.per_ip, "429": HALF_OPEN_EXTRA}),
                   f"half-open: {self.per_ip} sockets answered 408 and {HALF_OPEN_EXTRA} (past the per-address cap) "
                   f"429 ({dict(answers)})")
        timeout = self.handshake_timeout
        on_time = (span["408"] is not None and timeout - 0.5 <= span["408"][0] and span["408"][1] <= timeout + 3
                   and (span["429"] is None or span["429"][1] <= 3))
        self.check(on_time, f"half-open: 429 at once, 408 at handshake_timeout ({timeout:g} s; answered in "
                            f"{_span(span['408'])} s)")
        self.check(len(closed_in) == count and max(closed_in) <= timeout + 4,
                   f"half-open: every socket closed by the server by handshake_timeout + 4 s "
                   f"({len(closed_in)}/{count}, last at {_span(result['closed_in'])} s)")
        self.check(deltas == {"per_ip": HALF_OPEN_EXTRA, "handshake_timeout": self.per_ip},
                   f"half-open: wsgw_connections_refused_total counted them by limit (+{deltas})")


def _span(values: tuple[float, float] | None) -> str:
    return "-" if values is None else f"{values[0]:.2f}-{values[1]:.2f}"
