"""``[server] workers = 2`` under twistd on loopback and the shared Redis: one listening port served by two
gateway processes, one operator listener over both (README "Workers", wsgw/workers/)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Any

import pytest_twisted
import treq
from autobahn.twisted.websocket import WebSocketClientFactory
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.task import deferLater

from tests.support.daemon import Publisher, channels, new_prefix, scrape, token, value, workspace
from tests.support.redis_server import free_port, shared_endpoint
from tests.support.twistd import Twistd, spawn
from tests.support.waiting import eventually
from tests.support.wsclient import Client, connect

WS = workspace("w1", "files", "ds/files")
CLIENTS = 24


class Workers:
    """A twistd supervisor of two workers: its ports, its process, its Redis publisher."""

    def __init__(self, proto: Twistd, transport: Any, port: int, admin: int, prefix: str) -> None:
        self.proto, self.transport, self.port, self.admin, self.prefix = proto, transport, port, admin, prefix
        self.publisher = Publisher(prefix)

    async def metrics(self) -> dict[Any, float]:
        return await scrape(self.admin)

    async def pids(self) -> dict[int, int]:
        samples = await self.metrics()
        return {slot: int(value(samples, "wsgw_worker_pid", worker=str(slot))) for slot in (0, 1)}

    async def connections(self) -> dict[int, float]:
        samples = await self.metrics()
        return {slot: value(samples, "wsgw_worker_connections", worker=str(slot)) for slot in (0, 1)}

    async def healthy(self) -> bool:
        try:
            response = await treq.get(f"http://127.0.0.1:{self.admin}/healthz", timeout=5)
            await response.content()
        except Exception:  # noqa: BLE001 - not listening yet
            return False
        return response.code == 200  # type: ignore[no-any-return]

    async def stop(self) -> None:
        if os.environ.get("WSGW_TEST_SHOW"):
            print(self.proto.output.decode(errors="replace"))
        await self.publisher.close()
        if not self.proto.ended.called:
            pids = [pid for pid in (await self.pids()).values() if pid] if await self.healthy() else []
            os.kill(self.transport.pid, signal.SIGKILL)
            for pid in pids:
                _kill(pid)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _gone(pid: int) -> bool:
    """Whether process ``pid`` ended (a zombie counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def start(tmp_path: Any, workers: str = "2", listen: list[str] | None = None, extra: str = "",
                rundir: str | None = None) -> Workers:
    """The supervisor of ``workers``; with ``rundir``, started in ``tmp_path`` with ``--config wsgw.ini`` (a path
    relative to it, as is the publish token file it names) and ``twistd --rundir``, as an operator may (twistd
    changes directory before it runs)."""
    prefix = new_prefix()
    port, admin = free_port(), free_port()
    topics = "\n".join(f"{t} = {c}" for t, c in channels(prefix).items())
    (tmp_path / "token").write_text("operator-token-of-the-test\n")
    config = tmp_path / "wsgw.ini"
    token = "token" if rundir is not None else tmp_path / "token"  # (relative: to where twistd was started)
    config.write_text(f"[server]\nredis = {shared_endpoint()}\nworkers = {workers}\nshutdown_timeout = 5\n"
                      f"[topics]\n{topics}\n[delivery]\nbatch_window = 0\n"
                      f"[admin]\nlisten = tcp:{admin}:interface=127.0.0.1\npublish_token_file = {token}\n"
                      f"[chat]\nkey_prefix = {prefix}:chat:\n[auth]\nrevocation_prefix = {prefix}:revoked:\n"
                      f"[operator]\ninstance_name = gw\npage = yes\nkey_prefix = {prefix}:instances:\n{extra}")
    listening = [arg for d in listen or [f"tcp:{port}:interface=127.0.0.1"] for arg in ("--listen", d)]
    if rundir is None:
        proto, transport = spawn(["--config", str(config), *listening])
    else:
        proto, transport = spawn(["--config", config.name, *listening], twistd_args=("--rundir", rundir),
                                 cwd=str(tmp_path))
    daemon = Workers(proto, transport, port, admin, prefix)
    for _ in listen or [""]:
        await proto.logged(b"2 workers)")
    await eventually(daemon.healthy, "both workers up, their buses connected", timeout=30)
    return daemon


async def subscribed(port: int, login: str, path: str = "/ws") -> Client:
    client = await connect(port, path)
    assert (await client.subscribe(token(login, [WS])))["@type"] == "subscribed"
    return client


async def spread(daemon: Workers, count: int) -> list[Client]:
    """``count`` subscribed clients, connected at once, on both workers (checked through /metrics)."""
    clients = list(await gatherResults([Deferred.fromCoroutine(subscribed(daemon.port, f"user{i}"))
                                         for i in range(count)]))

    async def counted() -> bool:
        return sum((await daemon.connections()).values()) == count

    await eventually(counted, f"{count} connections in the workers' metrics")
    per_worker = await daemon.connections()
    assert per_worker[0] > 0 and per_worker[1] > 0, per_worker
    return clients


async def exactly_once(daemon: Workers, clients: list[Client], tag: str, events: int = 10) -> None:
    """Publish ``events`` node events then a last one; every client receives each once, in order, then the last."""
    for n in range(events + 1):
        assert await daemon.publisher.publish("tree", {"Target": {"Uuid": f"{tag}{n}", "Path": f"ds/files/{n}"}}) == 2
    for client in clients:
        got = [(await client.next(10))["Target"]["Uuid"] for _ in range(events + 1)]
        assert got == [f"{tag}{n}" for n in range(events + 1)]


async def landed(daemon: Workers, login: str, path: str = "/ws") -> tuple[Client, int]:
    """A subscribed client of ``login`` and the worker it landed on (the one whose connections grew)."""
    before = await daemon.connections()
    client = await subscribed(daemon.port, login, path)
    now = await daemon.connections()
    grown = [slot for slot in (0, 1) if now[slot] > before[slot]]
    assert len(grown) == 1, (before, now)
    return client, grown[0]


async def joined(client: Client, room: dict[str, str]) -> str:
    """``client`` joins ``room``; the room's uuid (from its ROOM_UPDATE)."""
    client.send_json({"@type": "JOIN", "Room": room})
    while True:
        frame = await client.next(10)
        if frame.get("@type") == "ROOM_UPDATE":
            return frame["Room"]["Uuid"]  # type: ignore[no-any-return]


async def heard(client: Client, text: str) -> None:
    while True:
        frame = await client.next(10)
        if "@type" not in frame and frame.get("Message") == text:
            return


@pytest_twisted.ensureDeferred
async def test_two_workers_share_the_port_deliver_each_event_once_and_chat_across_workers(tmp_path) -> None:
    """Clients connected at once land on both workers; each gets each published event once, in order; /metrics
    sums both workers (deliveries, connections) and shows each, also as OpenMetrics; /info lists both; a chat message crosses workers; every worker's
    log lines reach the supervisor's log tagged with the worker; SIGTERM closes every client 1000 and exits 0."""
    daemon = await start(tmp_path)
    try:
        clients = await spread(daemon, CLIENTS)
        await exactly_once(daemon, clients, "a")
        samples = await daemon.metrics()
        assert value(samples, "wsgw_deliveries_total", kind="nodes") == CLIENTS * 11
        assert sum(value(samples, "wsgw_worker_deliveries_total", worker=w) for w in "01") == CLIENTS * 11
        assert value(samples, "wsgw_connections", endpoint="ws") == CLIENTS
        assert value(samples, "wsgw_bus_events_received_total", topic="tree") == 11  # each worker reads all: once
        assert value(samples, "wsgw_bus_up") == 1 and value(samples, "wsgw_workers") == 2
        response = await treq.get(f"http://127.0.0.1:{daemon.admin}/metrics", timeout=5,
                                  headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        text = (await response.content()).decode()  # what Prometheus asks for first: it parses as OpenMetrics
        assert response.headers.getRawHeaders("content-type")[0].startswith("application/openmetrics-text")
        assert any(f.name == "wsgw_deliveries" for f in openmetrics_families(text))

        # GET /info and the operator page, passed to a worker: every worker is an instance, under its own name
        bearer = {"Authorization": "Bearer operator-token-of-the-test"}

        async def both_listed() -> bool:
            response = await treq.get(f"http://127.0.0.1:{daemon.admin}/info", headers=bearer, timeout=5)
            listing = json.loads(await response.content())
            return {i["id"] for i in listing["instances"]} == {"gw/worker-0", "gw/worker-1"}

        await eventually(both_listed, "both workers in /info")
        page = await treq.get(f"http://127.0.0.1:{daemon.admin}/", timeout=5)
        assert page.code == 200 and b"<html" in (await page.content()).lower()
        assert page.headers.getRawHeaders("content-security-policy")  # the worker's headers come back

        # chat: bob on one worker, alice on the other (connections until one lands there: at most 30)
        bob, bob_worker = await landed(daemon, "bob", "/chat")
        extra: list[Client] = []
        for _ in range(30):
            alice, alice_worker = await landed(daemon, "alice", "/chat")
            if alice_worker != bob_worker:
                break
            extra.append(alice)
        assert alice_worker != bob_worker, "30 chat sockets in a row landed on bob's worker"
        room = {"Type": "GLOBAL", "RoomTypeObject": f"{daemon.prefix}-lobby"}
        room_uuid = await joined(alice, room)
        assert await joined(bob, room) == room_uuid
        alice.send_json({"@type": "POST", "Message": {"RoomUuid": room_uuid, "Message": "across workers"}})
        await heard(bob, "across workers")
        await heard(alice, "across workers")
        assert b"[worker 0 " in daemon.proto.output and b"[worker 1 " in daemon.proto.output

        daemon.transport.signalProcess("TERM")
        closes = await gatherResults([c.wait_closed(15) for c in [*clients, bob, alice, *extra]])
        assert set(closes) == {(1000, "server shutting down")}
        daemon.proto.ended.addTimeout(30, reactor)
        assert await daemon.proto.ended == (0, None)
        assert daemon.proto.output.count(b"shutdown complete") == 3  # both workers, then the supervisor
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_a_killed_worker_is_started_again_and_only_its_clients_reconnect(tmp_path) -> None:
    """SIGKILL to one worker: its clients are cut, the other worker's clients are not and still get every event;
    the supervisor starts it again (a new pid, counted in wsgw_worker_restarts_total), the cut clients reconnect
    and get events; the summed counters never go down. SIGINT then stops everything as SIGTERM does."""
    daemon = await start(tmp_path)
    try:
        placed = [await landed(daemon, f"user{i}") for i in range(12)]
        while {slot for _, slot in placed} != {0, 1}:  # pragma: no cover - 12 on one worker: 1 in 2,048
            placed.append(await landed(daemon, f"user{len(placed)}"))
        victims = [c for c, slot in placed if slot == 0]
        others = [c for c, slot in placed if slot == 1]
        await exactly_once(daemon, [c for c, _ in placed], "before", events=3)
        delivered = value(await daemon.metrics(), "wsgw_deliveries_total", kind="nodes")
        old = await daemon.pids()
        os.kill(old[0], signal.SIGKILL)
        await gatherResults([c.wait_closed(10) for c in victims])
        await daemon.proto.logged(b"was killed by signal 9 (SIGKILL)")

        async def restarted() -> bool:
            samples = await daemon.metrics()
            return (value(samples, "wsgw_worker_restarts_total", worker="0") == 1
                    and value(samples, "wsgw_worker_up", worker="0") == 1)

        await eventually(restarted, "worker 0 started again", timeout=30)
        pids = await daemon.pids()
        assert pids[1] == old[1] and pids[0] not in (0, old[0])
        assert await daemon.healthy()
        assert not any(c.closed.called for c in others)
        back = [await subscribed(daemon.port, f"again{i}") for i in range(len(victims))]
        await exactly_once(daemon, others + back, "after", events=3)
        samples = await daemon.metrics()
        assert value(samples, "wsgw_deliveries_total", kind="nodes") >= delivered + 4 * len(others + back)
        daemon.transport.signalProcess("INT")  # Ctrl-C: as SIGTERM
        closes = await gatherResults([c.wait_closed(15) for c in others + back])
        assert set(closes) == {(1000, "server shutting down")}
        daemon.proto.ended.addTimeout(30, reactor)
        assert await daemon.proto.ended == (0, None)
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_a_worker_that_stops_answering_is_named_in_healthz_without_a_python_repr(tmp_path) -> None:
    """A worker stopped (SIGSTOP: alive, not answering) is reported by the supervisor's /healthz 503 as ``worker 1
    not answering: no answer within 5 s`` (README "Workers": 503 naming each worker that does not), not as the
    repr of the cancelled request's failures (``[<twisted.python.failure.Failure ...CancelledError: >]``), and
    /metrics still answers with it down; once continued, it is healthy again."""
    daemon = await start(tmp_path)
    stopped = (await daemon.pids())[1]
    os.kill(stopped, signal.SIGSTOP)
    try:
        response = await treq.get(f"http://127.0.0.1:{daemon.admin}/healthz", timeout=15)
        assert response.code == 503
        assert (await response.text()) == "worker 1 not answering: no answer within 5 s\n"
        response = await treq.get(f"http://127.0.0.1:{daemon.admin}/metrics", timeout=15)  # (after 5 s)
        assert response.code == 200
        lines = (await response.text()).splitlines()
        assert 'wsgw_worker_up{worker="0"} 1.0' in lines and 'wsgw_worker_up{worker="1"} 0.0' in lines
    finally:
        os.kill(stopped, signal.SIGCONT)
    try:
        await eventually(daemon.healthy, "worker 1 answering again", timeout=15)
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_workers_read_a_relative_config_after_twistd_changed_directory(tmp_path) -> None:
    """``twistd --rundir DIR wsgw --config wsgw.ini`` (relative to where twistd was started, as the supervisor read
    it, and a relative publish_token_file in it): each worker reads the same files and starts (it crash-looped on
    'cannot read config file wsgw.ini', started in DIR), serves clients, and a SIGHUP reloads the supervisor and
    every worker from that file."""
    elsewhere = tmp_path / "run"
    elsewhere.mkdir()
    daemon = await start(tmp_path, rundir=str(elsewhere))
    try:
        await exactly_once(daemon, [await subscribed(daemon.port, "alice")], "relative", events=1)
        daemon.transport.signalProcess("HUP")
        await daemon.proto.logged(b"SIGHUP: reloading the configuration, and the workers'")
        for slot in (0, 1):
            await daemon.proto.logged(f"[worker {slot} wsgw.reload".encode())
        assert b"cannot read config file" not in daemon.proto.output
        assert b"reload refused" not in daemon.proto.output
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_a_crash_loop_backs_off_and_sighup_reaches_every_worker(tmp_path) -> None:
    """SIGHUP to the supervisor reloads it and every worker (each logs its reload, tagged). A worker that cannot
    start (its config file broken meanwhile) is started again after 1, 2, 4 s..., not in a spinning loop, and
    /healthz says it is down; once the file is fixed it comes back."""
    daemon = await start(tmp_path)
    try:
        daemon.transport.signalProcess("HUP")
        for slot in (0, 1):
            await daemon.proto.logged(f"[worker {slot} wsgw.workers.child.WorkerService#info] SIGHUP: reloading".encode())
        config = tmp_path / "wsgw.ini"
        good = config.read_text()
        config.write_text(good + "[nowhere]\nkey = 1\n")
        os.kill((await daemon.pids())[1], signal.SIGKILL)
        await daemon.proto.logged(b"was killed by signal 9 (SIGKILL) after")
        await daemon.proto.logged(b"worker 1: " + str(config).encode() + b": unknown key [nowhere] key")
        for delay in (b"2", b"4"):  # the first start again came 1 s after the SIGKILL: the worker was young
            await daemon.proto.logged(b"exited with status 1 after", timeout=20)
            await daemon.proto.logged(b"starting it again in " + delay + b" s", timeout=20)
        assert not await daemon.healthy()
        config.write_text(good)
        await eventually(daemon.healthy, "worker 1 back once the file is fixed", timeout=30)
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_workers_of_a_killed_supervisor_close_their_clients_and_exit(tmp_path) -> None:
    """SIGKILL to the supervisor: the workers notice within seconds, close their clients with 1000 and exit."""
    daemon = await start(tmp_path)
    try:
        clients = await spread(daemon, CLIENTS)  # 8 landed all on one worker once in CI (2 × 2^-8)
        pids = list((await daemon.pids()).values())
        os.kill(daemon.transport.pid, signal.SIGKILL)
        closes = await gatherResults([c.wait_closed(15) for c in clients])
        assert set(closes) == {(1000, "server shutting down")}

        async def all_gone() -> bool:
            return all(_gone(pid) for pid in pids)

        await eventually(all_gone, "both workers gone", timeout=15)
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_twistd_refuses_workers_without_redis_or_zero_workers(tmp_path) -> None:
    """workers = 2 on the embedded bus, or workers = 0, stops twistd at start with one line naming the key."""
    for text, expected in (("[server]\nworkers = 2\n", b"[server] workers = 2 needs [server] redis"),
                           ("[server]\nworkers = 0\n", b"[server] workers = '0': must be auto or at least 1")):
        config = tmp_path / "bad.ini"
        config.write_text(text)
        proto, _ = spawn(["--config", str(config), "--listen", f"tcp:{free_port()}:interface=127.0.0.1"])
        proto.ended.addTimeout(30, reactor)
        code, _ = await proto.ended
        assert code not in (0, None)
        assert expected in proto.output
        assert b"Traceback" not in proto.output


async def connect_over(description: str, url: str) -> Client:
    """A WebSocket client at ``url`` over the client endpoint ``description`` (tcp6, ssl without verification,
    unix)."""
    factory = WebSocketClientFactory(url)
    factory.protocol = Client
    proto: Any = factory.buildProtocol(None)
    await connectProtocol(clientFromString(reactor, description), proto)
    opened = proto.opened
    opened.addTimeout(10, reactor)
    return await opened  # type: ignore[no-any-return]


@pytest_twisted.ensureDeferred
async def test_ipv6_tls_and_unix_listeners_are_served_by_the_workers(tmp_path) -> None:
    """tcp6 on [::1] and ssl on 127.0.0.1 (a SO_REUSEPORT socket per worker, TLS wrapped in the worker) and a
    unix socket (one socket shared by the workers): a client on each subscribes and gets the published events;
    with [log] format = json the workers' lines are the supervisor's JSON lines with a "worker" field."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert), "-days", "1"], check=True,
                   capture_output=True, timeout=60)
    short = tempfile.mkdtemp(prefix="wsgw-")
    sock = os.path.join(short, "ws.sock")
    v6, tls = free_port(), free_port()
    daemon = await start(tmp_path, listen=[f"tcp6:{v6}:interface=\\:\\:1",
                                           f"ssl:{tls}:interface=127.0.0.1:privateKey={key}:certKey={cert}",
                                           f"unix:{sock}"], extra="[log]\nformat = json\n")
    try:
        clients = [await connect_over(f"tcp:host=\\:\\:1:port={v6}", f"ws://[::1]:{v6}/ws"),
                   await connect_over(f"ssl:host=127.0.0.1:port={tls}", f"wss://127.0.0.1:{tls}/ws"),
                   await connect_over(f"unix:path={sock}", "ws://localhost/ws")]
        for i, client in enumerate(clients):
            assert (await client.subscribe(token(f"user{i}", [WS])))["@type"] == "subscribed"
        await exactly_once(daemon, clients, "any", events=2)
        lines = [json.loads(line) for line in daemon.proto.output.decode().splitlines() if line.startswith("{")]
        subscribes = [line for line in lines if line.get("message", "").startswith("session ")]
        assert subscribes and all(line["worker"] in (0, 1) for line in subscribes)  # JSON lines name the worker
        assert {line.get("worker") for line in lines} >= {None, 0, 1}  # and the supervisor's do not
    finally:
        await daemon.stop()
        shutil.rmtree(short, ignore_errors=True)


@pytest_twisted.ensureDeferred
async def test_the_bus_stream_is_counted_once_and_on_through_two_kills(tmp_path) -> None:
    """``wsgw_bus_events_received_total`` (each worker reads the whole stream): counted once, not per worker; after
    kill -9 of one worker and then of the other, each started again, the events published later are counted on
    (not hidden under the first processes' count until a new process passes it), never going down."""
    daemon = await start(tmp_path)
    try:
        async def received() -> float:
            return value(await daemon.metrics(), "wsgw_bus_events_received_total", topic="tree")

        async def publish(count: int, tag: str) -> None:
            for n in range(count):  # 2: both workers' bus subscribers got it
                assert await daemon.publisher.publish("tree", {"Target": {"Uuid": f"{tag}{n}", "Path": "ds/x"}}) == 2

        async def counted(expected: float) -> None:
            async def exact() -> bool:
                got = await received()
                assert got <= expected
                return got == expected
            await eventually(exact, f"{expected} bus events counted")

        await publish(4, "a")
        await counted(4)
        for slot, restarts in ((0, 1), (1, 1)):
            old = await daemon.pids()
            os.kill(old[slot], signal.SIGKILL)

            async def restarted(slot: int = slot, restarts: int = restarts) -> bool:
                samples = await daemon.metrics()
                assert value(samples, "wsgw_bus_events_received_total", topic="tree") >= 4 * (slot + 1)
                return (value(samples, "wsgw_worker_restarts_total", worker=str(slot)) == restarts
                        and value(samples, "wsgw_worker_up", worker=str(slot)) == 1
                        and value(samples, "wsgw_bus_up") == 1)

            await eventually(restarted, f"worker {slot} started again", timeout=30)
            await publish(4, f"after{slot}-")
            await counted(4 * (slot + 2))
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_each_worker_closes_its_unauthenticated_sockets_at_their_own_deadlines(tmp_path) -> None:
    """workers = 2, auth_timeout = 2: sockets opened 0.4 s apart on /ws and /chat (served by both workers, the
    kernel's choice) are closed 4001 each at its own open + 2 s (within a reactor turn and the close handshake);
    a subscribed one stays."""
    daemon = await start(tmp_path, extra="[websocket]\nauth_timeout = 2\n")
    try:
        clients, opened, closed_at = [], [], {}
        for i in range(6):
            client = await connect(daemon.port, "/chat" if i % 2 else "/ws")
            opened.append(time.time())
            client.closed.addCallback(lambda result, i=i: closed_at.setdefault(i, (time.time(), result))[1])
            clients.append(client)
            await deferLater(reactor, 0.4, lambda: None)
        kept = await subscribed(daemon.port, "alice")
        await gatherResults([client.wait_closed(6) for client in clients])
        for i, at in enumerate(opened):
            when, code = closed_at[i]
            assert code == (4001, "authentication timeout")
            assert at + 2 - 0.05 <= when < at + 2 + 1.0, (i, when - at)
        await deferLater(reactor, 2.2, lambda: None)
        assert not kept.closed.called
    finally:
        await daemon.stop()
