"""Faults: shutdown with peers that do not cooperate, chat during a Redis outage."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from tests.support.daemon import new_prefix, start_daemon, token
from tests.support.wsclient import Client, connect

HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class Mute(Protocol):
    """Completes the WebSocket handshake, then never answers anything (not even the close frame)."""

    def __init__(self) -> None:
        self.upgraded: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()
        self._buffer = b""

    def connectionMade(self) -> None:
        self.transport.write(HANDSHAKE)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        if not self.upgraded.called and b"\r\n\r\n" in self._buffer:
            assert self._buffer.startswith(b"HTTP/1.1 101")
            self.upgraded.callback(None)

    def connectionLost(self, reason: object = None) -> None:
        self.lost.callback(None)


@pytest_twisted.ensureDeferred
async def test_shutdown_drops_peers_that_ignore_the_close_within_the_timeout() -> None:
    """A peer that never completes the close handshake is dropped at shutdown_timeout; cooperating peers get 1000."""
    daemon = await start_daemon(new_prefix(), redis=None, overrides={"server.shutdown_timeout": "0.5"})
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
async def test_chat_during_a_redis_outage_gets_an_error_not_a_hang() -> None:
    """With Redis down, a chat POST is answered at once with an error frame; the socket stays usable after Redis returns."""
    from tests.support.redis_server import RedisServer
    from tests.test_integration import healthz

    with RedisServer() as redis:
        daemon = await start_daemon(new_prefix(), redis=redis.endpoint)
        try:
            await daemon.service.redis_commands.whenConnected()
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
        finally:
            await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_a_peer_that_does_not_answer_pings_is_dropped() -> None:
    """The server pings every ping_interval and drops a peer that has not answered within pong_timeout."""
    # generous enough that the polite client (same process, same reactor) always answers in time
    overrides = {"websocket.ping_interval": "0.5", "websocket.pong_timeout": "1.5", "websocket.auth_timeout": "0"}
    daemon = await start_daemon(new_prefix(), redis=None, overrides=overrides)
    try:
        mute = Mute()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", daemon.port), mute)
        await mute.upgraded
        polite = await connect(daemon.port)  # Autobahn's client answers pings itself
        mute.lost.addTimeout(6, reactor)
        await mute.lost
        assert polite.state == polite.STATE_OPEN
        assert len(daemon.service.gateway.table) == 1
    finally:
        await daemon.stop()
