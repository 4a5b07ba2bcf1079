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
  meanwhile events are PUBLISHed to Redis on every topic and chat sockets JOIN and POST;
- while they churn, the bulk and hostile phases of ``tests/soak_scenarios.py`` in turn (issue 11): bursts of
  12,000 DELETEs to prompt readers (all arrive, in order, none closed; time to the last one), ping floods by
  peers that never read (closed 4029 or dropped; the daemon's RSS bounded), half-open handshakes from one
  address (429 past ``max_connections_per_ip``, 408 at ``handshake_timeout``, counted by limit), and the
  operator listener's /healthz and /metrics asked every second (always 200).

Every "normal" session that leaves by itself must have received every node event of its workspaces published
between its ``subscribed`` and ``SOAK_LOSS_MARGIN`` seconds before it left (the well-behaved lose nothing,
whatever the bursts and floods do meanwhile); the publish-to-arrival times are reported.

The run is ``SOAK_CYCLES`` cycles of ramp, churn and drain. After each drain the daemon must hold no session,
no timer, no chat socket, no more delayed calls than before the first client, and (after ``gc.collect()``) no
live protocol or session object; after the last drain its Python allocated blocks and its RSS must be back near
their values after the first drain (no growth with the sessions served), and it must exit cleanly on SIGTERM.
RSS is not expected to fall back to the idle daemon's: the allocator keeps the pages of the first peak for
reuse (the probe reports RSS after ``malloc_trim`` too, to show how much of that is merely kept). The figures
are printed at the end (also as Markdown rows for ``bench/RESULTS.md``); the exit status is 0 only if every
check passed.

Environment: ``SOAK_SECONDS`` (total churn time, default 240: about 5 minutes in all), ``SOAK_SESSIONS``
(concurrent sessions, 2000), ``SOAK_CYCLES`` (2), ``SOAK_EVENT_RATE`` (node events/s, 50; tasks/idm/activity at
a tenth of it each), ``SOAK_CONNECT_RATE`` (new sockets/s at most, 300), ``SOAK_LIFETIME`` (seconds a session
lives, ``5,30``),
``SOAK_REDIS``, ``SOAK_KEEP`` (keep the work directory with the daemon's log), ``SOAK_LOSS_MARGIN`` (8 s); the
phases' ``SOAK_BURST_EVENTS`` (12000), ``SOAK_BURST_READERS`` (4), ``SOAK_FLOOD_SECONDS`` (12), ``SOAK_FLOODERS``
(8 at a time), ``SOAK_PINGERS`` (8), ``SOAK_FLOOD_RSS_MIB`` (32). The daemon runs with
``max_connections_per_ip`` twice the churn's share of one of its 16 source addresses (plus 50).
"""

from __future__ import annotations

import bisect
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
from collections.abc import Callable, Iterator
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

from tests.soak_scenarios import Scenarios, env_float, gc_over, metric, now, proc_rss_kb, refused, sleep, until
from tests.support.redis_server import RedisServer, free_port
from wsgw.config import DEFAULT_TOPICS

reactor: Any = _reactor
SECRET = "soak-secret-of-at-least-32-bytes-long!"
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
WORKSPACES = 50
LOGINS = 500
ROOMS = 20
SOURCES = tuple(f"127.0.0.{i}" for i in range(1, 17))  # spread client ports over source addresses (and per-IP caps)

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
            # the daemon freezes long-lived objects (wsgw.gcpolicy): thaw them, so that what a closed socket left
            # in a reference cycle is found (collected here) and every live object counted, then freeze again
            out["frozen"] = gc.get_freeze_count()
            gc.unfreeze()
            out["garbage_after_thaw"] = gc.collect()
            objects = gc.get_objects()
            out["live_protocols"] = sum(1 for o in objects if isinstance(o, GatewayProtocol))
            out["live_sessions"] = sum(1 for o in objects if type(o) is Session)
            del objects
            gc.freeze()
            out["allocated_blocks"] = sys.getallocatedblocks()  # Python objects' memory, whatever RSS says
            out["rss_kb_after_gc"] = rss_kb()
        if b"trim" in request.args:  # give freed heap pages back to the OS: what RSS keeps is then not in use
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            out["rss_kb_after_trim"] = rss_kb()
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(out).encode()


strports.service(PROBE, Site(Probe())).setServiceParent(application)
'''


def mint(login: str, exp: float, workspaces: list[int]) -> str:
    spaces = [{"uuid": f"w{i}", "slug": f"s{i}", "roots": [{"uuid": f"r{i}", "path": f"ds/w{i}"}]}
              for i in workspaces]
    return jwt.encode({"name": login, "sub": f"uuid-{login}", "exp": int(exp), "workspaces": spaces}, SECRET,
                      algorithm="HS256")


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
        self.workspaces: list[int] = []
        self.subscribed_at: float | None = None  # when "subscribed" arrived: every event published later is due
        self.left_at: float | None = None  # when this client decided to leave
        self.got: dict[str, float] = {}  # node Uuid (churn events "n<seq>") -> when it arrived
        self.first_exp = 0  # a "refresh" session's first token's exp, and when it sent the fresher one
        self.refreshed_at: float | None = None

    def later(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        self._timers.append(reactor.callLater(delay, fn, *args))

    def subscribe(self, exp: float) -> None:
        workspaces = self.workspaces = random.sample(range(WORKSPACES), random.randint(1, 3))
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
            self.first_exp = int(now() + 6)
            self.subscribe(self.first_exp)
            self.later(2, self.refresh)  # before exp: the socket must stay
        else:
            self.subscribe(now() + 3600)
        self.later(self.lifetime, self.leave)

    def refresh(self) -> None:
        self.refreshed_at = now()
        self.subscribe(now() + 3600)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        frame = json.loads(payload)
        kind = frame.get("@type") or ("node" if "Target" in frame or "Source" in frame else
                                      "task" if "TaskUpdated" in frame else "chat_message")
        self.soak.frames[kind] += 1
        if kind == "node":
            uuid = (frame.get("Target") or {}).get("Uuid", "")
            if uuid.startswith("n"):
                self.got.setdefault(uuid, now())
        if kind == "subscribed" and not self.subscribed:
            self.subscribed = True
            self.subscribed_at = now()
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
        self.left_at = now()
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

    def __init__(self, port: int, target: int, connect_rate: float, lifetime: tuple[float, float], events: Events,
                 margin: float) -> None:
        self.port = port
        self.events = events
        self.margin = margin  # an event is due to a session if published at least this long before it left
        self.due = 0  # node events due to the normal sessions that left by themselves
        self.lost: Counter[str] = Counter()  # of those, not received: a few examples by session kind
        self.lost_total = 0
        self.latencies: list[float] = []  # publish -> arrival of the due events, seconds
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
            self._audit(client)
        elif expected is not None and (code, reason) == expected:
            self.outcomes[f"{client.kind}: closed {code} by the server, as designed"] += 1
        elif (client.kind, code, reason) == ("refresh", 4001, "token expired") and (
                client.refreshed_at is None or client.refreshed_at > client.first_exp - 1):
            # this loaded process sent the fresher token less than a second before exp (or not at all): the
            # daemon may well have seen the first one expire first
            self.outcomes["refresh: closed 4001, its refresh sent too late by this client"] += 1
        else:
            self.unexpected[f"{client.kind}: closed {code} {reason}"[:80]] += 1
        if self._drained is not None and not self.active and not self.connecting:
            self._drained.callback(None)

    def _audit(self, client: SoakClient) -> None:
        """A normal session that left by itself must have got every churn node event of its workspaces published
        between its "subscribed" and ``margin`` seconds before it left (later ones may still be on their way)."""
        if client.kind != "normal" or client.subscribed_at is None or client.left_at is None:
            return
        for node, published_at in self.events.due(client.workspaces, client.subscribed_at,
                                                  client.left_at - self.margin):
            self.due += 1
            arrived = client.got.get(node)
            if arrived is None:
                self.lost_total += 1
                if len(self.lost) < 10:
                    self.lost[f"{node} (published {published_at - client.subscribed_at:.1f} s after subscribed, "
                              f"{client.left_at - published_at:.1f} s before leaving)"] += 1
            else:
                self.latencies.append(arrived - published_at)

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
            client.left_at = now()
            if random.random() < 0.5:
                client.sendClose(1000)
            else:
                client.transport.abortConnection()  # type: ignore[union-attr]
        self._drained.addTimeout(60, reactor)
        await self._drained
        self._drained = None


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
        self._times: dict[int, list[float]] = {w: [] for w in range(WORKSPACES)}  # per workspace, node events
        self._uuids: dict[int, list[str]] = {w: [] for w in range(WORKSPACES)}  # (not the merged hot ones)

    def due(self, workspaces: list[int], since: float, until_: float) -> Iterator[tuple[str, float]]:
        """(Uuid, publish time) of the churn node events of ``workspaces`` published in [since, until_]."""
        for w in workspaces:
            times = self._times[w]
            for i in range(bisect.bisect_left(times, since), bisect.bisect_right(times, until_)):
                yield self._uuids[w][i], times[i]

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
                self._times[w].append(now())
                self._uuids[w].append(f"n{self._seq}")
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


def write_config(workdir: Path, redis: str, prefix: str, port: int, admin_port: int, per_ip: int) -> Path:
    topics = "\n".join(f"{t} = {prefix}.{c}" for t, c in DEFAULT_TOPICS.items())
    config = workdir / "wsgw.ini"
    config.write_text(
        f"[server]\nlisten = tcp:{port}:interface=127.0.0.1:backlog=1024\nredis = {redis}\nshutdown_timeout = 10\n"
        f"[topics]\n{topics}\n"
        "[auth]\nleeway = 0\n"
        f"[websocket]\nauth_timeout = 5\nping_interval = 5\npong_timeout = 10\nmax_connections_per_ip = {per_ip}\n"
        f"[admin]\nlisten = tcp:{admin_port}:interface=127.0.0.1\n"
        f"[chat]\nkey_prefix = {prefix}:chat:\n"
    )
    return config


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
                baseline: dict[str, Any], scenarios: Scenarios) -> dict[str, Any]:
    report.say(f"cycle {number}: ramp to {soak.target} sessions, churn {seconds:.0f} s with bulk bursts, ping floods "
               "and half-open handshakes, drain")
    await scenarios.open_readers(number)
    scenarios.set_phase("churn")
    soak.start()
    await events.start()
    started = now()
    await until(lambda: len(soak.active) >= soak.target * 0.95, 120)
    report.say(f"  ramped to {len(soak.active)} sessions in {now() - started:.1f} s")
    peak_rss = 0
    end = started + seconds
    phases = ensureDeferred(scenarios.run(end))
    while now() < end:
        await sleep(min(15.0, max(0.0, end - now())))
        state = await daemon.probe()
        rss = proc_rss_kb(daemon.pid)
        peak_rss = max(peak_rss, rss)
        report.say(f"  t={now() - started:5.0f}s client sessions {len(soak.active):5d}  daemon sessions "
                   f"{state['sessions']:5d} (subscribed {state['subscribed']:5d})  RSS {rss / 1024:7.1f} MiB  "
                   f"delayed calls {state['delayed_calls']:6d}  started so far {soak.sessions_started}")
    await phases
    await scenarios.close_readers(number)
    scenarios.set_phase("drain")
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
               f"live sessions {state['live_sessions']}, frozen objects {state['frozen']} (before any client: "
               f"{baseline['frozen']}), cyclic garbage found after thawing {state['garbage_after_thaw']}, "
               f"Python allocated blocks {state['allocated_blocks']} "
               f"(before any client: {baseline['allocated_blocks']}), RSS {rss / 1024:.1f} MiB "
               f"(peak {peak_rss / 1024:.1f}; {trimmed / 1024:.1f} after malloc_trim)")
    report.check(bool(empty), f"cycle {number}: the session table, timers and chat sockets are empty after the drain")
    report.check(state["live_protocols"] == 0 and state["live_sessions"] == 0,
                 f"cycle {number}: no GatewayProtocol or Session object is alive after gc")
    report.check(state["garbage_after_thaw"] <= 2000,
                 f"cycle {number}: frozen objects leaked nothing: {state['garbage_after_thaw']} objects of cyclic "
                 f"garbage after thawing ({soak.sessions_started} sessions started so far)")
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
    seconds = env_float("SOAK_SECONDS", 240)
    target = int(env_float("SOAK_SESSIONS", 2000))
    cycles = max(1, int(env_float("SOAK_CYCLES", 2)))
    rate = env_float("SOAK_EVENT_RATE", 50)
    connect_rate = env_float("SOAK_CONNECT_RATE", 300)
    lo, hi = (float(x) for x in os.environ.get("SOAK_LIFETIME", "5,30").split(","))
    margin = env_float("SOAK_LOSS_MARGIN", 8)
    per_ip = 2 * -(-target // len(SOURCES)) + 50  # twice the churn's share of an address: only the half-open hit it
    limit = raise_open_files_limit()
    if target * 1.2 + 100 + 2 * per_ip + 100 > limit:
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
    config = write_config(workdir, redis, prefix, port, admin_port, per_ip)
    daemon = Daemon(workdir, config, probe_port)
    events = Events(redis_port, {t: f"{prefix}.{c}" for t, c in DEFAULT_TOPICS.items()}, rate)
    soak = Soak(port, target, connect_rate, (lo, hi), events, margin)
    scenarios = Scenarios(port=port, admin_port=admin_port, redis_port=redis_port,
                          channel=f"{prefix}.{DEFAULT_TOPICS['tree']}", daemon_pid=daemon.pid, per_ip=per_ip,
                          handshake_timeout=10.0, keepalive=5.0 + 10.0,  # as write_config sets them
                          mint=lambda login, workspaces: mint(login, now() + 3600, workspaces),
                          check=report.check, say=report.say)
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
        await scenarios.start()
        for number in range(1, cycles + 1):
            results.append(await cycle(number, soak, events, daemon, seconds / cycles, report, baseline, scenarios))
        await scenarios.stop()
        wall = now() - t0
        cpu = proc_cpu_seconds(daemon.pid) - cpu_start
        first, last = results[0]["rss_kb"], results[-1]["rss_kb"]
        peak = max([r["peak_rss_kb"] for r in results] + [rss for _, _, rss in scenarios.rss])
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
        text = await (await treq.get(f"http://127.0.0.1:{admin_port}/metrics", timeout=30)).text()
        collections = await metric(admin_port, "wsgw_gc_pause_seconds_count")
        collections = {k.split('"')[1]: int(v) for k, v in collections.items()}
        over_wall, over_cpu = gc_over(text, "wsgw_gc_pause_seconds"), gc_over(text, "wsgw_gc_pause_cpu_seconds")
        longest = {k.split('"')[1]: round(v * 1000, 1)
                   for k, v in (await metric(admin_port, "wsgw_gc_pause_longest_seconds")).items()}
        longest_cpu = {k.split('"')[1]: round(v * 1000, 1)
                       for k, v in (await metric(admin_port, "wsgw_gc_pause_longest_cpu_seconds")).items()}
        report.check(sum(over_cpu.values()) == 0,
                     f"no garbage collection took over 50 ms of CPU time (wsgw_gc_pause_cpu_seconds): by generation "
                     f"{over_cpu}, longest {longest_cpu} ms of CPU, collections {collections}")
        report.say(_slow_gc_note(over_wall, longest, scenarios.health.slow_gc))
        growth = last - first
        report.check(growth <= max(0.1 * first, 16 * 1024),
                     f"RSS after the last drain ({last / 1024:.1f} MiB) is back near the first drain's "
                     f"({first / 1024:.1f} MiB): {growth / 1024:+.1f} MiB")
        latencies = sorted(soak.latencies)

        def pct(q: float) -> float:
            return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")

        report.check(soak.due > 0 and soak.lost_total == 0,
                     f"the well-behaved sessions lost nothing: {soak.due} node events due to normal sessions (published "
                     f"between their subscribe and {margin:g} s before they left), {soak.lost_total} missing "
                     f"{dict(soak.lost) or ''}; publish-to-arrival p50 {pct(0.5):.2f} s, p99 {pct(0.99):.2f} s, "
                     f"max {pct(1.0):.2f} s")
        health = scenarios.health
        report.check(not health.failures and sum(health.answers.values()) > 0,
                     f"/healthz and /metrics on the operator listener answered 200 throughout "
                     f"({sum(health.answers.values())} asked, failures {health.failures or 'none'})")
        refusals = await metric(admin_port, "wsgw_connections_refused_total")
        half_open_429 = sum(r["refused"]["per_ip"] for r in scenarios.results["half-open"])
        report.check(refused(refusals, "per_ip") == half_open_429 and refused(refusals, "total") == 0,
                     f"only the half-open sockets met the per-address cap ({per_ip}) and none the listener's cap: "
                     f"refused {({k: int(v) for k, v in refusals.items() if v})}")
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
        report.say(f"| GC collections by generation / over 50 ms of CPU / over 50 ms of wall clock; longest CPU / "
                   f"wall (ms) | {collections} / {over_cpu} / {over_wall}; {longest_cpu} / {longest} |")
        report.say(f"| after drain: sessions, timers, chat sockets, live protocols | {final['sessions']}, "
                   f"{final['timers']}, {final['chat_sockets']}, {final['live_protocols']} |")
        report.say(f"| delayed calls: before / after | {baseline['delayed_calls']} / {final['delayed_calls']} |")
        report.say(f"| normal sessions: node events due / lost / publish-to-arrival p50, p99, max | {soak.due} / "
                   f"{soak.lost_total} / {pct(0.5):.2f}, {pct(0.99):.2f}, {pct(1.0):.2f} s |")
        for b in scenarios.results["burst"]:
            times = [r["time_to_last"] for r in b["readers"] if r["time_to_last"] is not None]
            report.say(f"| burst {b['number']}: {scenarios.burst_events} DELETEs to {len(b['readers'])} prompt readers: "
                       f"received / out of order / closed / time to last | "
                       + ", ".join(str(r["received"]) for r in b["readers"]) + " / "
                       f"{sum(r['out_of_order'] for r in b['readers'])} / "
                       f"{sum(r['closed'] is not None for r in b['readers'])} / "
                       + (f"{min(times):.2f}-{max(times):.2f} s" if times else "-")
                       + f" (published in {b['published_in']:.2f} s) |")
        for i, f in enumerate(scenarios.results["flood"], 1):
            report.say(f"| ping flood {i}: fast flooders / slow pingers (dropped after) / MiB written / 4029 closes / "
                       f"daemon RSS before, peak | {f['fast']} / {f['slow']} ({_pair(f['dropped_after'])} s) / "
                       f"{f['bytes_written'] / 2**20:.0f} / {f['closes_4029']} / {f['rss_before_kb'] / 1024:.1f}, "
                       f"{f['rss_peak_kb'] / 1024:.1f} MiB |")
        for i, h in enumerate(scenarios.results["half-open"], 1):
            report.say(f"| half-open {i}: {h['sockets']} sockets, answers / 408 after / closed after / refused by "
                       f"limit | {h['answers']} / {_pair(h['answered_in']['408'])} s / {_pair(h['closed_in'])} s / "
                       f"{h['refused']} |")
        report.say(f"| refusals by limit (wsgw_connections_refused_total) | "
                   f"{ {k: int(v) for k, v in refusals.items() if v} } |")
        by_phase: dict[str, int] = {}
        for _, phase, rss in scenarios.rss:
            by_phase[phase] = max(by_phase.get(phase, 0), rss)
        report.say("| daemon RSS peak by phase | " + ", ".join(f"{k} {v / 1024:.1f}" for k, v in by_phase.items())
                   + " MiB |")
        slowest = max(health.slowest.items(), key=lambda kv: kv[1], default=("-", 0.0))
        report.say(f"| operator listener: asked / failed / slowest | {sum(health.answers.values())} / "
                   f"{sum(health.failures.values())} / {slowest[1]:.2f} s ({slowest[0]}) |")
        ok = all(passed for passed, _ in report.checks)
        report.say(f"\nsoak {'PASSED' if ok else 'FAILED'} ({sum(p for p, _ in report.checks)}/{len(report.checks)} "
                   "checks)")
        return 0 if ok else 1
    finally:
        await scenarios.stop()
        await events.close()
        if not daemon.ended.called:
            os.kill(daemon.pid, signal.SIGKILL)
        if redis_server is not None:
            redis_server.stop()
        if ok and not os.environ.get("SOAK_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"(work directory kept: {workdir})")


def _slow_gc_note(over: dict[str, int], longest: dict[str, float], seen: list[tuple[float, str, int, float]]) -> str:
    """The report's line on wall-clock GC pauses: reported, never a failure (issue 13, goal 4 is judged in CPU
    time: wall clock counts time the daemon waited for a core on this shared machine)."""
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    if not sum(over.values()):
        return (f"  [note] no garbage collection stopped the daemon over 50 ms of wall clock either (longest "
                f"{longest} ms; load average now {load})")
    when = ", ".join(f"{n} in {phase} at load {avg:.1f}" for _, phase, n, avg in seen) or "not seen by the 1 s probe"
    return (f"  [note, not a failure] {sum(over.values())} collection(s) stopped the daemon over 50 ms of wall "
            f"clock (by generation {over}, longest {longest} ms): {when} (1-minute load average; "
            f"{os.cpu_count()} CPUs; now {load}). Wall clock counts the time the process waited for a core: on a "
            f"machine loaded past its cores that is the scheduler's, not the collector's; the collector's own "
            f"work is the CPU time checked above")


def _pair(values: tuple[float, float] | None) -> str:
    return "-" if values is None else f"{values[0]:.2f}-{values[1]:.2f}"


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
