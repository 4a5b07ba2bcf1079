"""``[server] workers = 2`` under twistd on loopback and the shared Redis: one listening port served by two
gateway processes, one operator listener over both (README "Workers", wsgw/workers/)."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import gatherResults

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


async def start(tmp_path: Any, workers: str = "2") -> Workers:
    prefix = new_prefix()
    port, admin = free_port(), free_port()
    topics = "\n".join(f"{t} = {c}" for t, c in channels(prefix).items())
    (tmp_path / "token").write_text("operator-token-of-the-test\n")
    config = tmp_path / "wsgw.ini"
    config.write_text(f"[server]\nredis = {shared_endpoint()}\nworkers = {workers}\nshutdown_timeout = 5\n"
                      f"[topics]\n{topics}\n[delivery]\nbatch_window = 0\n"
                      f"[admin]\nlisten = tcp:{admin}:interface=127.0.0.1\npublish_token_file = {tmp_path / 'token'}\n"
                      f"[chat]\nkey_prefix = {prefix}:chat:\n[auth]\nrevocation_prefix = {prefix}:revoked:\n")
    proto, transport = spawn(["--config", str(config), "--listen", f"tcp:{port}:interface=127.0.0.1"])
    daemon = Workers(proto, transport, port, admin, prefix)
    await proto.logged(b"2 workers)")
    await eventually(daemon.healthy, "both workers up, their buses connected", timeout=30)
    return daemon


async def subscribed(port: int, login: str, path: str = "/ws") -> Client:
    client = await connect(port, path)
    assert (await client.subscribe(token(login, [WS])))["@type"] == "subscribed"
    return client


async def spread(daemon: Workers, count: int) -> list[Client]:
    """``count`` subscribed clients, connected at once, on both workers (checked through /metrics)."""
    clients = list(await gatherResults([Deferred_of(subscribed(daemon.port, f"user{i}")) for i in range(count)]))

    async def counted() -> bool:
        return sum((await daemon.connections()).values()) == count

    await eventually(counted, f"{count} connections in the workers' metrics")
    per_worker = await daemon.connections()
    assert per_worker[0] > 0 and per_worker[1] > 0, per_worker
    return clients


def Deferred_of(coroutine: Any) -> Any:  # noqa: N802 - reads as a type conversion
    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(coroutine)


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
    sums both workers (deliveries, connections) and shows each; a chat message crosses workers; every worker's
    log lines reach the supervisor's log tagged with the worker; SIGTERM closes every client 1000 and exits 0."""
    daemon = await start(tmp_path)
    try:
        clients = await spread(daemon, CLIENTS)
        await exactly_once(daemon, clients, "a")
        samples = await daemon.metrics()
        assert value(samples, "wsgw_deliveries_total", kind="nodes") == CLIENTS * 11
        assert sum(value(samples, "wsgw_worker_deliveries_total", worker=w) for w in "01") == CLIENTS * 11
        assert value(samples, "wsgw_connections", endpoint="ws") == CLIENTS
        assert value(samples, "wsgw_bus_events_received_total", topic="tree") == 2 * 11  # each worker reads all
        assert value(samples, "wsgw_bus_up") == 1 and value(samples, "wsgw_workers") == 2

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
