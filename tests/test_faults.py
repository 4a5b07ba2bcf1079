"""Faults: shutdown with peers that do not cooperate, chat during a Redis outage."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from tests.daemon import new_prefix, start_daemon, token
from tests.wsclient import connect

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
    assert not daemon.service.gateway.sessions
