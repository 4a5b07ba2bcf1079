"""The bounded soak (``make soak``; not part of ``make test``): churn thousands of sessions against a twistd daemon.

What runs:

- a private ``redis-server`` on loopback (or ``SOAK_REDIS=tcp:host:port``, an existing one: only channels and
  chat keys under a fresh prefix are used);
- the daemon as its own ``twistd`` process on 127.0.0.1, built by the plugin's own ``Options``/``makeService``
  from an INI file, inside a small ``.tac`` that adds a loopback-only *probe*: a JSON page reading the live
  process (open sessions, the session table, the gateway's timers, chat sockets, ``reactor.getDelayedCalls()``
  by function, and after ``gc.collect()`` the live protocol and session objects). The operator listener's
  ``/metrics`` is on too, and its figures are cross-checked;
- this process: real Autobahn clients on the Twisted reactor, ``SOAK_SESSIONS`` of them at a time, each one
  connecting, subscribing, receiving, and leaving (closing cleanly, aborting, or being closed by the server:
  expired tokens, never-subscribed sockets, bad frames), a replacement connecting for each one that leaves;
  meanwhile events are PUBLISHed to Redis on every topic and chat sockets JOIN and POST.

The run is ``SOAK_CYCLES`` cycles of ramp, churn and drain. After each drain the daemon must hold no session,
no timer, no chat socket, no more delayed calls than before the first client, and (after ``gc.collect()``) no
live protocol or session object; after the last drain its Python allocated blocks and its RSS must be back near
their values after the first drain (no growth with the sessions served), and it must exit cleanly on SIGTERM.
RSS is not expected to fall back to the idle daemon's: the allocator keeps the pages of the first peak for
reuse (the probe reports RSS after ``malloc_trim`` too, to show how much of that is merely kept). The figures
are printed at the end (also as Markdown rows for ``bench/RESULTS.md``); the exit status is 0 only if every
check passed.

Environment: ``SOAK_SECONDS`` (total churn time, default 180), ``SOAK_SESSIONS`` (concurrent sessions, 2000),
``SOAK_CYCLES`` (2), ``SOAK_EVENT_RATE`` (node events/s, 50; tasks/idm/activity at a tenth of it each),
``SOAK_CONNECT_RATE`` (new sockets/s at most, 300), ``SOAK_LIFETIME`` (seconds a session lives, ``5,30``),
``SOAK_REDIS``, ``SOAK_KEEP`` (keep the work directory with the daemon's log).
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import signal
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt
import treq
import txredisapi
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import reactor as _reactor
from twisted.internet import task
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import globalLogBeginner, textFileLogObserver

from tests.support.redis_server import RedisServer, free_port
from wsgw.config import DEFAULT_TOPICS

reactor: Any = _reactor
SECRET = "soak-secret-of-at-least-32-bytes-long!"
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
WORKSPACES = 50
LOGINS = 500
ROOMS = 20
SOURCES = ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4")  # spread client ports over source addresses

# kind of session -> weight; see SoakClient for what each does
KINDS = {"normal": 70, "chat": 12, "refresh": 5, "expiring": 5, "idle": 4, "garbage": 4}

TAC = '''
"""The soak's daemon: the wsgw plugin's own service, plus a loopback probe of the live process."""
import ctypes, gc, json, sys
from collections import Counter
from twisted.application import service, strports
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site
from wsgw import tap
from wsgw.sessions import Session
from wsgw.web.protocols import GatewayProtocol

options = tap.Options()
options.parseOptions(["--config", CONFIG])
gateway_service = tap.makeService(options)
application = service.Application("wsgw-soak")
gateway_service.setServiceParent(application)


def rss_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


class Probe(Resource):
    isLeaf = True

    def render_GET(self, request):
        s = gateway_service
        gw = s.gateway
        calls = reactor.getDelayedCalls()
        out = {
            "bus_connected": bool(s.bus.connected),
            "sessions": len(gw.table),
            "subscribed": sum(1 for session in gw.table if session.access is not None),
            "timers": sum(1 for session in gw.table if session.timer is not None),
            "chat_sockets": sum(1 for session in gw.table if session.endpoint is s.chat),
            "chat_room_sockets": sum(len(v) for v in s.chat._membership._room_sockets.values()),
            "node_merges_pending": s.nodes.pending,
            "delayed_calls": len(calls),
            "delayed_by_func": dict(Counter(getattr(c.func, "__qualname__", repr(c.func)) for c in calls)),
            "crashed": dict(s.dispatcher.crashed),
            "malformed": dict(s.dispatcher.malformed),
            "closes": {str(k): v for k, v in gw.closes.items()},
            "rss_kb": rss_kb(),
        }
        if b"gc" in request.args:
            gc.collect()
            objects = gc.get_objects()
            out["live_protocols"] = sum(1 for o in objects if isinstance(o, GatewayProtocol))
            out["live_sessions"] = sum(1 for o in objects if type(o) is Session)
            del objects
            out["allocated_blocks"] = sys.getallocatedblocks()  # Python objects' memory, whatever RSS says
            out["rss_kb_after_gc"] = rss_kb()
        if b"trim" in request.args:  # give freed heap pages back to the OS: what RSS keeps is then not in use
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            out["rss_kb_after_trim"] = rss_kb()
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(out).encode()


strports.service(PROBE, Site(Probe())).setServiceParent(application)
'''


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def now() -> float:
    return float(reactor.seconds())


def mint(login: str, exp: float, workspaces: list[int]) -> str:
    spaces = [{"uuid": f"w{i}", "slug": f"s{i}", "roots": [{"uuid": f"r{i}", "path": f"ds/w{i}"}]}
              for i in workspaces]
    return jwt.encode({"name": login, "sub": f"uuid-{login}", "exp": int(exp), "workspaces": spaces}, SECRET,
                      algorithm="HS256")


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


def proc_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- the daemon process


class Daemon(ProcessProtocol):
    """``twistd -n -y soak.tac``; its log goes to a file, ``ended`` fires with (exit code, signal)."""

    def __init__(self, workdir: Path, config: Path, probe_port: int) -> None:
        self.ended: Deferred[tuple[int | None, int | None]] = Deferred()
        tac = workdir / "soak.tac"
        tac.write_text(f"CONFIG = {str(config)!r}\nPROBE = {f'tcp:{probe_port}:interface=127.0.0.1'!r}\n" + TAC)
        self.log = workdir / "twistd.log"
        args = [TWISTD, "--nodaemon", "--pidfile=", f"--logfile={self.log}", "-y", str(tac)]
        self.transport_: Any = reactor.spawnProcess(self, TWISTD, args, env={**os.environ, "WSGW_HMAC_SECRET": SECRET},
                                                    path=str(Path.cwd()))
        self.pid: int = self.transport_.pid
        self._probe = f"http://127.0.0.1:{probe_port}/"

    def processEnded(self, reason: Any) -> None:
        self.ended.callback((reason.value.exitCode, reason.value.signal))

    async def probe(self, collect: bool = False, trim: bool = False) -> dict[str, Any]:
        query = "&".join(name for name, wanted in (("gc=1", collect), ("trim=1", trim)) if wanted)
        response = await treq.get(self._probe + ("?" + query if query else ""), timeout=30)
        return json.loads(await response.text())  # type: ignore[no-any-return]

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# --------------------------------------------------------------------------- the clients


class SoakClient(WebSocketClientProtocol):
    """One session; ``plan`` (set before connecting) says what it does. Reports to the Soak when it ends."""

    soak: Soak
    kind: str
    lifetime: float

    def __init__(self) -> None:
        super().__init__()
        self.subscribed = False
        self.closing_myself = False
        self._timers: list[Any] = []
        self.login = f"u{random.randrange(LOGINS)}"

    def later(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        self._timers.append(reactor.callLater(delay, fn, *args))

    def subscribe(self, exp: float) -> None:
        workspaces = random.sample(range(WORKSPACES), random.randint(1, 3))
        self.sendMessage(json.dumps({"@type": "subscribe", "jwt": mint(self.login, exp, workspaces)}).encode())

    def onOpen(self) -> None:
        self.soak.opened(self)
        kind = self.kind
        if kind == "idle":
            return  # the server closes it at the auth timeout
        if kind == "garbage":
            self.sendMessage(b"{this is not json")
            return
        if kind == "expiring":
            self.subscribe(now() + random.uniform(3, 8))  # closed 4001 at exp (leeway 0)
            return
        if kind == "refresh":
            self.subscribe(now() + 4)
            self.later(2, self.subscribe, now() + 3600)  # before exp: the socket must stay
        else:
            self.subscribe(now() + 3600)
        self.later(self.lifetime, self.leave)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        frame = json.loads(payload)
        kind = frame.get("@type") or ("node" if "Target" in frame or "Source" in frame else
                                      "task" if "TaskUpdated" in frame else "chat_message")
        self.soak.frames[kind] += 1
        if kind == "subscribed" and not self.subscribed:
            self.subscribed = True
            if self.kind == "chat":
                room = {"Type": "NODE", "RoomTypeObject": f"soak-room-{random.randrange(ROOMS)}"}
                self.sendMessage(json.dumps({"@type": "JOIN", "Room": room}).encode())
                if random.random() < 0.3:
                    self.later(self.lifetime / 2, self.post, room)

    def post(self, room: dict[str, Any]) -> None:
        if self.state == self.STATE_OPEN:
            message = {"Message": f"hello from {self.login} at {now():.0f}"}
            self.sendMessage(json.dumps({"@type": "POST", "Room": room, "Message": message}).encode())

    def leave(self) -> None:
        if self.state != self.STATE_OPEN:
            return
        self.closing_myself = True
        if random.random() < 0.5:
            self.sendClose(1000)
        else:
            self.transport.abortConnection()  # type: ignore[union-attr]

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        for call in self._timers:
            if call.active():
                call.cancel()
        self._timers.clear()
        self.soak.closed(self, code, reason)


EXPECTED_SERVER_CLOSES = {
    "expiring": (4001, "token expired"),
    "idle": (4001, "authentication timeout"),
    "garbage": (1003, "the frame is not valid JSON"),
}


class Soak:
    """Keeps ``target`` sessions alive while ``running``; counts what happens to them."""

    def __init__(self, port: int, target: int, connect_rate: float, lifetime: tuple[float, float]) -> None:
        self.port = port
        self.target = target
        self.lifetime = lifetime
        self.running = False
        self.active: set[SoakClient] = set()
        self.connecting = 0
        self.frames: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.unexpected: Counter[str] = Counter()
        self.sessions_started = 0
        self._factories = {path: self._factory(path) for path in ("/ws", "/chat")}
        self._kinds = list(KINDS)
        self._weights = [KINDS[k] for k in self._kinds]
        self._per_tick = max(1, int(connect_rate / 20))
        self._loop = task.LoopingCall(self._tick)
        self._drained: Deferred[None] | None = None

    def _factory(self, path: str) -> WebSocketClientFactory:
        factory = WebSocketClientFactory(f"ws://127.0.0.1:{self.port}{path}")
        factory.protocol = SoakClient
        factory.setProtocolOptions(maxMessagePayloadSize=0, maxFramePayloadSize=0, openHandshakeTimeout=30,
                                   closeHandshakeTimeout=10)
        return factory

    def start(self) -> None:
        self.running = True
        self._loop.start(0.05)

    def _tick(self) -> None:
        for _ in range(self._per_tick):
            if not self.running or len(self.active) + self.connecting >= self.target:
                return
            self._connect()

    def _connect(self) -> None:
        kind = random.choices(self._kinds, self._weights)[0]
        proto = self._factories["/chat" if kind == "chat" else "/ws"].buildProtocol(None)
        proto.soak, proto.kind = self, kind
        proto.lifetime = random.uniform(*self.lifetime)
        source = SOURCES[self.sessions_started % len(SOURCES)]
        endpoint = clientFromString(reactor, f"tcp:127.0.0.1:{self.port}:timeout=10:bindAddress={source}")
        self.connecting += 1
        self.sessions_started += 1

        def failed(failure: Any) -> None:
            self.connecting -= 1
            self.unexpected[f"connect failed: {failure.getErrorMessage()[:60]}"] += 1

        connectProtocol(endpoint, proto).addErrback(failed)

    def opened(self, client: SoakClient) -> None:
        self.connecting -= 1
        self.active.add(client)

    def closed(self, client: SoakClient, code: int | None, reason: str | None) -> None:
        if client not in self.active:
            self.connecting -= 1
            self.unexpected[f"closed before open: {code} {reason}"[:80]] += 1
            return
        self.active.discard(client)
        expected = EXPECTED_SERVER_CLOSES.get(client.kind)
        if client.closing_myself:
            self.outcomes[f"{client.kind}: left"] += 1
        elif expected is not None and (code, reason) == expected:
            self.outcomes[f"{client.kind}: closed {code} by the server, as designed"] += 1
        else:
            self.unexpected[f"{client.kind}: closed {code} {reason}"[:80]] += 1
        if self._drained is not None and not self.active and not self.connecting:
            self._drained.callback(None)

    async def drain(self) -> None:
        """Stop connecting and end every session (half close cleanly, half abort); fires when all are gone."""
        self.running = False
        if self._loop.running:
            self._loop.stop()
        await until(lambda: self.connecting == 0, 30)
        self._drained = Deferred()
        if not self.active:
            self._drained.callback(None)
        for client in list(self.active):
            client.closing_myself = True
            if random.random() < 0.5:
                client.sendClose(1000)
            else:
                client.transport.abortConnection()  # type: ignore[union-attr]
        self._drained.addTimeout(60, reactor)
        await self._drained
        self._drained = None


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


# --------------------------------------------------------------------------- events


class Events:
    """Publishes node events at ``rate``/s (plus tasks, IDM and activity at a tenth each) while running."""

    def __init__(self, redis_port: int, channels: dict[str, str], rate: float) -> None:
        self._port = redis_port
        self._channels = channels
        self._rate = rate
        self._conn: Any = None
        self._loop = task.LoopingCall(self._tick)
        self._seq = 0
        self.published: Counter[str] = Counter()

    async def start(self) -> None:
        if self._conn is None:
            self._conn = await txredisapi.Connection("127.0.0.1", self._port, reconnect=False)
        self._loop.start(0.1)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    async def close(self) -> None:
        self.stop()
        if self._conn is not None:
            await self._conn.disconnect()

    def _tick(self) -> None:
        per_tick = self._rate / 10
        count = int(per_tick) + (1 if random.random() < per_tick % 1 else 0)
        for _ in range(count):
            self._seq += 1
            w = random.randrange(WORKSPACES)
            if self._seq % 5 == 0:  # a hot node: merged over the batch window
                event = {"Type": "UPDATE_CONTENT", "Target": {"Uuid": f"hot-{w}", "Path": f"ds/w{w}/hot.txt",
                                                               "Etag": str(self._seq)}}
            else:
                event = {"Target": {"Uuid": f"n{self._seq}", "Path": f"ds/w{w}/f{self._seq}.txt", "Type": "LEAF"}}
            self._publish("tree", event)
            if self._seq % 10 == 0:
                user = f"u{random.randrange(LOGINS)}"
                self._publish("tasks", {"TaskUpdated": {"ID": str(self._seq), "TriggerOwner": user}})
                self._publish("idm", {"User": {"Login": user, "Uuid": f"uuid-{user}"}})
                self._publish("activity", {"OwnerType": "USER", "OwnerId": user,
                                           "Activity": {"actor": {"id": "someone"}, "object": {"name": "a/b.txt"}}})

    def _publish(self, topic: str, event: dict[str, Any]) -> None:
        self.published[topic] += 1
        d = self._conn.publish(self._channels[topic], json.dumps(event))
        d.addErrback(lambda f: self.published.update({f"{topic} failed": 1}))


# --------------------------------------------------------------------------- the run


def raise_open_files_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def write_config(workdir: Path, redis: str, prefix: str, port: int, admin_port: int) -> Path:
    topics = "\n".join(f"{t} = {prefix}.{c}" for t, c in DEFAULT_TOPICS.items())
    config = workdir / "wsgw.ini"
    config.write_text(
        f"[server]\nlisten = tcp:{port}:interface=127.0.0.1:backlog=1024\nredis = {redis}\nshutdown_timeout = 10\n"
        f"[topics]\n{topics}\n"
        "[auth]\nleeway = 0\n"
        "[websocket]\nauth_timeout = 5\nping_interval = 5\npong_timeout = 10\n"
        f"[admin]\nlisten = tcp:{admin_port}:interface=127.0.0.1\n"
        f"[chat]\nkey_prefix = {prefix}:chat:\n"
    )
    return config


async def metric(admin_port: int, name: str) -> dict[str, float]:
    """The samples of one metric family from /metrics, by label text."""
    text = await (await treq.get(f"http://127.0.0.1:{admin_port}/metrics", timeout=30)).text()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key[len(name):] or "_"] = float(value)
    return samples


class Report:
    def __init__(self) -> None:
        self.checks: list[tuple[bool, str]] = []
        self.lines: list[str] = []

    def check(self, ok: bool, what: str) -> None:
        self.checks.append((ok, what))
        print(f"  [{'ok' if ok else 'FAIL'}] {what}", flush=True)

    def say(self, text: str) -> None:
        self.lines.append(text)
        print(text, flush=True)


async def cycle(number: int, soak: Soak, events: Events, daemon: Daemon, seconds: float, report: Report,
                baseline: dict[str, Any]) -> dict[str, Any]:
    report.say(f"cycle {number}: ramp to {soak.target} sessions, churn {seconds:.0f} s, drain")
    soak.start()
    await events.start()
    started = now()
    await until(lambda: len(soak.active) >= soak.target * 0.95, 120)
    report.say(f"  ramped to {len(soak.active)} sessions in {now() - started:.1f} s")
    peak_rss = 0
    end = started + seconds
    while now() < end:
        await sleep(min(15.0, max(0.0, end - now())))
        state = await daemon.probe()
        rss = proc_rss_kb(daemon.pid)
        peak_rss = max(peak_rss, rss)
        report.say(f"  t={now() - started:5.0f}s client sessions {len(soak.active):5d}  daemon sessions "
                   f"{state['sessions']:5d} (subscribed {state['subscribed']:5d})  RSS {rss / 1024:7.1f} MiB  "
                   f"delayed calls {state['delayed_calls']:6d}  started so far {soak.sessions_started}")
    events.stop()
    await soak.drain()
    empty = await until(lambda: _is_empty(daemon), 60)
    settled = await until(lambda: _settled(daemon, baseline), 30)
    state = await daemon.probe(collect=True)
    rss = proc_rss_kb(daemon.pid)
    peak_rss = max(peak_rss, rss)
    trimmed = (await daemon.probe(trim=True))["rss_kb_after_trim"]
    report.say(f"  drained: daemon sessions {state['sessions']}, timers {state['timers']}, "
               f"chat sockets {state['chat_sockets']}, delayed calls {state['delayed_calls']} "
               f"(before any client: {baseline['delayed_calls']}), live protocols {state['live_protocols']}, "
               f"live sessions {state['live_sessions']}, Python allocated blocks {state['allocated_blocks']} "
               f"(before any client: {baseline['allocated_blocks']}), RSS {rss / 1024:.1f} MiB "
               f"(peak {peak_rss / 1024:.1f}; {trimmed / 1024:.1f} after malloc_trim)")
    report.check(bool(empty), f"cycle {number}: the session table, timers and chat sockets are empty after the drain")
    report.check(state["live_protocols"] == 0 and state["live_sessions"] == 0,
                 f"cycle {number}: no GatewayProtocol or Session object is alive after gc")
    report.check(bool(settled), f"cycle {number}: no delayed call leaked ({state['delayed_by_func']} now, "
                                f"{baseline['delayed_by_func']} before any client)")
    return {"rss_kb": rss, "peak_rss_kb": peak_rss, "trimmed_kb": trimmed, "state": state,
            "sessions_started": soak.sessions_started}


async def _is_empty(daemon: Daemon) -> bool:
    s = await daemon.probe()
    return (s["sessions"], s["timers"], s["chat_sockets"], s["chat_room_sockets"]) == (0, 0, 0, 0)


async def _settled(daemon: Daemon, baseline: dict[str, Any]) -> bool:
    """No function has more delayed calls than before the first client (periodic ones come and go)."""
    now_by_func: dict[str, int] = (await daemon.probe())["delayed_by_func"]
    before: dict[str, int] = baseline["delayed_by_func"]
    return all(count <= before.get(func, 0) for func, count in now_by_func.items())


async def main() -> int:
    seconds = env_float("SOAK_SECONDS", 180)
    target = int(env_float("SOAK_SESSIONS", 2000))
    cycles = max(1, int(env_float("SOAK_CYCLES", 2)))
    rate = env_float("SOAK_EVENT_RATE", 50)
    connect_rate = env_float("SOAK_CONNECT_RATE", 300)
    lo, hi = (float(x) for x in os.environ.get("SOAK_LIFETIME", "5,30").split(","))
    limit = raise_open_files_limit()
    if target * 1.2 + 100 > limit:
        print(f"SOAK_SESSIONS={target} does not fit the open-file limit {limit}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="wsgw-soak-"))
    globalLogBeginner.beginLoggingTo([textFileLogObserver(open(workdir / "loader.log", "w"))],  # noqa: SIM115
                                     redirectStandardIO=False)
    report = Report()
    prefix = f"soak-{uuid.uuid4().hex[:8]}"
    redis_server = None
    if os.environ.get("SOAK_REDIS"):
        redis = os.environ["SOAK_REDIS"]
        redis_port = int(redis.rsplit(":", 1)[1])
    else:
        redis_server = RedisServer()
        redis_server.start()
        redis, redis_port = redis_server.endpoint, redis_server.port
    port, admin_port, probe_port = free_port(), free_port(), free_port()
    config = write_config(workdir, redis, prefix, port, admin_port)
    daemon = Daemon(workdir, config, probe_port)
    events = Events(redis_port, {t: f"{prefix}.{c}" for t, c in DEFAULT_TOPICS.items()}, rate)
    soak = Soak(port, target, connect_rate, (lo, hi))
    ok = False
    try:
        ready = await until(lambda: _probe_ready(daemon), 60)
        if not ready:
            print("the daemon did not start:\n" + daemon.tail(), file=sys.stderr)
            return 1
        baseline = await daemon.probe(collect=True)
        start_rss = proc_rss_kb(daemon.pid)
        cpu_start = proc_cpu_seconds(daemon.pid)
        report.say(f"soak: {cycles} cycle(s), {seconds:.0f} s of churn, {target} concurrent sessions, lifetimes "
                   f"{lo:g}-{hi:g} s, {rate:g} node events/s, open-file limit {limit}, daemon pid {daemon.pid}, "
                   f"work dir {workdir}")
        report.say(f"before any client: RSS {start_rss / 1024:.1f} MiB, delayed calls {baseline['delayed_calls']} "
                   f"{baseline['delayed_by_func']}")
        results = []
        t0 = now()
        for number in range(1, cycles + 1):
            results.append(await cycle(number, soak, events, daemon, seconds / cycles, report, baseline))
        wall = now() - t0
        cpu = proc_cpu_seconds(daemon.pid) - cpu_start
        first, last = results[0]["rss_kb"], results[-1]["rss_kb"]
        peak = max(r["peak_rss_kb"] for r in results)
        final = results[-1]["state"]
        connections = await metric(admin_port, "wsgw_connections")
        failed = await metric(admin_port, "wsgw_bus_events_failed_total")
        report.check(all(v == 0 for v in connections.values()), f"/metrics agrees: wsgw_connections {connections}")
        report.check(not final["crashed"] and all(v == 0 for v in failed.values()),
                     f"no topic handler crashed ({final['crashed'] or 'none'})")
        report.check(not soak.unexpected, f"no unexpected session outcome ({dict(soak.unexpected) or 'none'})")
        if len(results) > 1:  # caches fill during the first cycle; a per-session leak shows up after it
            blocks = [r["state"]["allocated_blocks"] for r in results]
            later = soak.sessions_started - results[0]["sessions_started"]
            report.check(blocks[-1] - blocks[0] <= max(2000, later // 10),
                         f"Python allocated blocks after the last drain ({blocks[-1]}) are back near the first "
                         f"drain's ({blocks[0]}) after {later} more sessions: {blocks[-1] - blocks[0]:+d}")
        growth = last - first
        report.check(growth <= max(0.1 * first, 16 * 1024),
                     f"RSS after the last drain ({last / 1024:.1f} MiB) is back near the first drain's "
                     f"({first / 1024:.1f} MiB): {growth / 1024:+.1f} MiB")
        daemon.transport_.signalProcess("TERM")
        stop_started = now()
        daemon.ended.addTimeout(30, reactor)
        code, sig = await daemon.ended
        report.check((code, sig) in ((0, None), (None, signal.SIGTERM)),
                     f"the daemon exits cleanly on SIGTERM in {now() - stop_started:.1f} s ({code}, {sig})")
        report.say("")
        report.say(f"sessions started {soak.sessions_started}; outcomes {dict(soak.outcomes)}")
        report.say(f"frames received {dict(soak.frames)}; events published {dict(events.published)}")
        report.say(f"daemon CPU {cpu:.1f} s over {wall:.0f} s ({100 * cpu / wall:.0f}% of one core); RSS before any "
                   f"client {start_rss / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB, after each drain "
                   + ", ".join(f"{r['rss_kb'] / 1024:.1f}" for r in results) + " MiB")
        report.say("")
        report.say("| soak | value |\n|---|---|")
        report.say(f"| run | {cycles} cycles, {seconds:.0f} s churn, {target} concurrent, lifetimes {lo:g}-{hi:g} s, "
                   f"{rate:g} node ev/s |")
        report.say(f"| sessions served | {soak.sessions_started} |")
        report.say(f"| frames received by clients | {sum(soak.frames.values())} |")
        report.say(f"| daemon RSS: idle / peak / after each drain (after malloc_trim) | {start_rss / 1024:.1f} / "
                   f"{peak / 1024:.1f} / " + " / ".join(f"{r['rss_kb'] / 1024:.1f} ({r['trimmed_kb'] / 1024:.1f})"
                                                       for r in results) + " MiB |")
        report.say(f"| Python allocated blocks: before any client / after each drain | {baseline['allocated_blocks']} / "
                   + " / ".join(str(r["state"]["allocated_blocks"]) for r in results) + " |")
        report.say(f"| daemon CPU | {cpu:.1f} s over {wall:.0f} s |")
        report.say(f"| after drain: sessions, timers, chat sockets, live protocols | {final['sessions']}, "
                   f"{final['timers']}, {final['chat_sockets']}, {final['live_protocols']} |")
        report.say(f"| delayed calls: before / after | {baseline['delayed_calls']} / {final['delayed_calls']} |")
        ok = all(passed for passed, _ in report.checks)
        report.say(f"\nsoak {'PASSED' if ok else 'FAILED'} ({sum(p for p, _ in report.checks)}/{len(report.checks)} "
                   "checks)")
        return 0 if ok else 1
    finally:
        await events.close()
        if not daemon.ended.called:
            os.kill(daemon.pid, signal.SIGKILL)
        if redis_server is not None:
            redis_server.stop()
        if ok and not os.environ.get("SOAK_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"(work directory kept: {workdir})")


async def _probe_ready(daemon: Daemon) -> bool:
    try:
        return bool((await daemon.probe())["bus_connected"])
    except Exception:  # noqa: BLE001 - not listening yet
        return False


def run(reactor_: Any) -> Deferred[None]:
    def done(code: int) -> None:
        if code:
            raise SystemExit(code)

    return ensureDeferred(main()).addCallback(done)


if __name__ == "__main__":
    task.react(run)
