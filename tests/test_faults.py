"""Faults: shutdown (clean, and with peers that do not cooperate), Redis dying and coming back, chat during a Redis
outage, peers that stop answering pings."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from tests.support.daemon import Publisher, StartGateway, healthz, scrape, token, value, workspace
from tests.support.rawtcp import UPGRADE, client_frame, raw_connect
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until
from tests.support.wsclient import Client, connect

PERSONAL = workspace("ws-alice", "personal-files", "pydiods1/personal/alice")


def node(path: str) -> dict[str, object]:
    return {"Uuid": "n1", "Path": path, "Type": "LEAF"}


class Mute(Protocol):
    """Completes the WebSocket handshake, then never answers anything (not even the close frame)."""

    def __init__(self) -> None:
        self.upgraded: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()
        self._buffer = b""

    def connectionMade(self) -> None:
        self.transport.write(UPGRADE)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        if not self.upgraded.called and b"\r\n\r\n" in self._buffer:
            assert self._buffer.startswith(b"HTTP/1.1 101")
            self.upgraded.callback(None)

    def connectionLost(self, reason: object = None) -> None:
        self.lost.callback(None)


@pytest_twisted.ensureDeferred
async def test_shutdown_drops_peers_that_ignore_the_close_within_the_timeout(gateway: StartGateway) -> None:
    """A peer that never completes the close handshake is dropped at shutdown_timeout; cooperating peers get 1000."""
    daemon = await gateway(redis=None, overrides={"server.shutdown_timeout": "0.5"})
    mute = Mute()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", daemon.port), mute)
    await mute.upgraded
    polite = await connect(daemon.port)
    await polite.subscribe(token("alice"))
    stopping = daemon.service.stopService()
    stopping.addTimeout(4, reactor)  # bounded: 0.5 s timeout, well under Autobahn's 5 s close handshake timeout
    await stopping
    assert await polite.wait_closed() == (1000, "server shutting down")
    mute.lost.addTimeout(1, reactor)
    await mute.lost
    assert not daemon.service.gateway.table


async def next_matching(client: Client, match: Callable[[Any], bool], limit: int = 10) -> Any:
    """The next frame that matches, skipping at most ``limit`` others (each wait bounded)."""
    for _ in range(limit):
        frame = await client.next()
        if match(frame):
            return frame
    raise AssertionError(f"no matching frame within {limit} frames")


@pytest_twisted.ensureDeferred
async def test_chat_during_a_redis_outage_gets_an_error_not_a_hang(gateway: StartGateway) -> None:
    """With Redis down, a chat POST is answered at once with an error frame; the socket stays usable after Redis returns."""
    from tests.support.redis_server import RedisServer

    with RedisServer() as redis:
        daemon = await gateway(redis=redis.endpoint)
        await daemon.service.redis_commands.whenConnected().addTimeout(10, reactor)
        alice = await connect(daemon.port, "/chat")
        await alice.subscribe(token("alice"))
        room = {"Type": "GLOBAL", "RoomTypeObject": "outage"}
        alice.send_json({"@type": "JOIN", "Room": room})
        update = await alice.next()
        assert update["@type"] == "ROOM_UPDATE"
        room_uuid = update["Room"]["Uuid"]
        # the JOIN is complete once its ROOM_UPDATE came back through the bus too
        await next_matching(alice, lambda f: f.get("@type") == "ROOM_UPDATE")

        redis.kill()
        for _ in range(3000):  # each try is an HTTP round trip: wait until the daemon has seen the outage
            if await healthz(daemon.port) == 503 and not daemon.service.redis_commands.connected:
                break
        else:
            raise AssertionError("the daemon never noticed the Redis outage")
        alice.send_json({"@type": "POST", "Message": {"RoomUuid": room_uuid, "Message": "lost?"}})
        error = await next_matching(alice, lambda f: f.get("@type") == "error")
        assert error == {"@type": "error", "error": "POST: the chat store is unavailable, try again later"}

        redis.start()  # a fresh, empty Redis (no persistence): the room must be joined again
        for back in (daemon.service.redis_commands.whenConnected(), daemon.service.bus.whenConnected()):
            back.addTimeout(20, reactor)
            await back
        alice.send_json({"@type": "JOIN", "Room": room})
        update = await next_matching(alice, lambda f: f.get("@type") == "ROOM_UPDATE")
        alice.send_json({"@type": "POST", "Message": {"RoomUuid": update["Room"]["Uuid"], "Message": "back"}})
        posted = await next_matching(alice, lambda f: f.get("Message") == "back")
        assert posted["Author"] == "alice"


@pytest_twisted.ensureDeferred
async def test_a_peer_that_does_not_answer_pings_is_dropped(gateway: StartGateway) -> None:
    """The server pings every ping_interval and drops a peer that has not answered within pong_timeout."""
    # generous enough that the polite client (same process, same reactor) always answers in time
    overrides = {"websocket.ping_interval": "0.5", "websocket.pong_timeout": "1.5", "websocket.auth_timeout": "0"}
    daemon = await gateway(redis=None, overrides=overrides)
    mute = Mute()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", daemon.port), mute)
    await mute.upgraded
    polite = await connect(daemon.port)  # Autobahn's client answers pings itself
    mute.lost.addTimeout(6, reactor)
    await mute.lost
    assert polite.state == polite.STATE_OPEN, polite.closed.result if polite.closed.called else None
    assert len(daemon.service.gateway.table) == 1


@pytest_twisted.ensureDeferred
async def test_shutdown_closes_sockets_with_1000(gateway: StartGateway) -> None:
    """Stopping the service closes every socket with 1000 'server shutting down'."""
    daemon = await gateway(redis=None)
    client = await connect(daemon.port)
    await client.subscribe(token("alice", [PERSONAL]))
    await daemon.stop()
    assert await client.wait_closed() == (1000, "server shutting down")


@pytest_twisted.ensureDeferred
async def test_redis_restart_in_the_middle(gateway: StartGateway) -> None:
    """Redis dies and comes back: /healthz goes 503 then 200, the bus re-subscribes, later events still arrive."""
    with RedisServer() as redis:
        daemon = await gateway(redis=redis.endpoint)
        pub = Publisher(daemon.prefix, port=redis.port)  # the private server's port: daemon.publish uses the shared Redis
        try:
            alice = await connect(daemon.port)
            await alice.subscribe(token("alice", [PERSONAL]))
            await pub.publish("tree", {"Target": node("pydiods1/personal/alice/before.txt")})
            assert (await alice.next())["Target"]["Path"] == "personal-files/before.txt"
            await pub.close()

            redis.kill()
            for _ in range(500):  # each try is a full HTTP round trip; the bus notices the drop within a few
                if await healthz(daemon.port) == 503:
                    break
            else:
                pytest.fail("/healthz never reported the Redis outage")
            assert not daemon.service.bus.connected

            redis.start()
            for back in (daemon.service.bus.whenConnected(), daemon.service.redis_commands.whenConnected()):
                back.addTimeout(20, reactor)
                await back  # /healthz needs the chat store's connection too
            assert await healthz(daemon.port) == 200
            await pub.publish("tree", {"Target": node("pydiods1/personal/alice/after.txt")})
            assert (await alice.next())["Target"]["Path"] == "personal-files/after.txt"
        finally:
            await pub.close()


async def health(port: int) -> tuple[int, bytes]:
    """The status and body of ``GET /healthz``."""
    response = await treq.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    return response.code, await response.content()


async def until_health(port: int, code: int, within: float) -> tuple[float, bytes]:
    """Poll /healthz every 0.1 s until it answers ``code``; how long it took and its body (bounded). (Polling, not
    an event: what is under test is what an HTTP client polling /healthz sees, and nothing announces it.)"""
    start = reactor.seconds()
    while True:
        status, body = await health(port)
        if status == code:
            return reactor.seconds() - start, body
        if reactor.seconds() - start > within:
            raise AssertionError(f"/healthz still {status} {body!r} after {within} s")
        await task.deferLater(reactor, 0.1, lambda: None)


@pytest_twisted.ensureDeferred
async def test_healthz_reports_a_frozen_redis_within_seconds_and_recovers(gateway: StartGateway) -> None:
    """Redis frozen (SIGSTOP) with every connection up: /healthz (both listeners) answers 503 naming the
    stalled connection within 4 s (before: 200 for up to 40 s, until the bus PING every 30 s timed out after
    10 s), /metrics says which one; when Redis resumes (SIGCONT), 200 again within a few seconds."""
    with RedisServer() as redis:
        daemon = await gateway(redis=redis.endpoint, admin="tcp:0:interface=127.0.0.1")
        assert (await health(daemon.port))[0] == 200
        redis.freeze()
        try:
            took, body = await until_health(daemon.port, 503, within=8)
            assert took < 5.0, took  # PING every 1 s, stalled after 2 s; the rest is slack for a busy machine
            assert b"stalled: no answer to PING for" in body, body
            assert (await health(daemon.admin_port))[0] == 503
            samples = await scrape(daemon)
            assert sum(value(samples, "wsgw_redis_stalled", role=role)
                       for role in ("bus subscriber", "bus publisher", "chat store")) >= 1
        finally:
            redis.thaw()
        took, body = await until_health(daemon.port, 200, within=15)
        assert body == b"ok\n"
        samples = await scrape(daemon)
        assert all(value(samples, "wsgw_redis_stalled", role=role) == 0
                   for role in ("bus subscriber", "bus publisher", "chat store"))


@pytest_twisted.ensureDeferred
async def test_a_peer_that_sends_frames_but_never_reads_is_dropped_by_the_ping_timeout(gateway: StartGateway) -> None:
    """Only a pong proves the client reads: frames from a peer that stopped reading do not keep it alive."""
    daemon = await gateway(redis=None, overrides={"websocket.ping_interval": "0.5", "websocket.pong_timeout": "1"})
    peer = await connect(daemon.port)
    peer.transport.pauseProducing()  # never reads the server's pings again
    chatter = task.LoopingCall(peer.send_json, {"@type": "noise"})  # ignored on /ws, well inside the rate
    chatter.start(0.2)
    try:
        await wait_until(lambda: len(daemon.service.gateway.table) == 0, "the ping timeout", timeout=5)
    finally:
        chatter.stop()
        peer.transport.resumeProducing()


@pytest_twisted.ensureDeferred
async def test_a_peer_that_closes_and_never_reads_is_dropped_after_the_close_timeout(gateway: StartGateway) -> None:
    """After answering a peer's close frame the server waits for its buffers to drain at most the close
    handshake timeout (5 s), then drops the socket, and the session with it (a peer that sends a close frame
    and then neither reads nor closes held its socket, buffers and session for as long as it liked)."""
    daemon = await gateway(redis=None, overrides={"delivery.pacing_rate": "0"})
    peer = await raw_connect(daemon.port)
    peer.send(UPGRADE)
    await wait_until(lambda: b"\r\n\r\n" in peer.received, "the upgrade")
    peer.send(client_frame(0x1, json.dumps({"@type": "subscribe", "jwt": token("alice", [PERSONAL])}).encode()))
    await wait_until(lambda: daemon.service.gateway.subscribes_accepted == 1, "the subscribe")
    peer.transport.pauseProducing()  # type: ignore[union-attr]
    (session,) = daemon.service.gateway.table
    pad = json.dumps("x" * 16_000)
    await daemon.flood(lambda i: json.dumps({"Target": dict(node("pydiods1/personal/alice/f"), MetaStore={"p": pad})}
                                            ).encode(), lambda: session.connection._out.paused)  # type: ignore
    peer.send(client_frame(0x8, (1000).to_bytes(2, "big")))
    closed_at = reactor.seconds()
    try:
        await wait_until(lambda: len(daemon.service.gateway.table) == 0, "the close timeout", timeout=8)
        assert reactor.seconds() - closed_at >= 4.5  # the timeout, not something else, ended it
    finally:
        peer.close()
