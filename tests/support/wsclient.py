"""A real WebSocket client for integration tests (Autobahn on the Twisted reactor), with bounded waits."""

from __future__ import annotations

import json
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.endpoints import clientFromString, connectProtocol

TIMEOUT = 5.0


class Client(WebSocketClientProtocol):
    """Queues every received frame (decoded JSON) and records the close code."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: DeferredQueue[Any] = DeferredQueue()
        self.opened: Deferred[Client] = Deferred()
        self.closed: Deferred[tuple[int | None, str | None]] = Deferred()

    def onOpen(self) -> None:
        self.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.frames.put(json.loads(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.opened.called:
            self.opened.errback(ConnectionError(f"closed before open: {code} {reason}"))
        if not self.closed.called:
            self.closed.callback((code, reason))

    def send_json(self, obj: Any) -> None:
        self.sendMessage(json.dumps(obj).encode())

    def next(self, timeout: float = TIMEOUT) -> Deferred[Any]:
        """The next frame, failing with a TimeoutError after ``timeout`` seconds."""
        d = self.frames.get()
        d.addTimeout(timeout, reactor)
        return d

    def wait_closed(self, timeout: float = TIMEOUT) -> Deferred[tuple[int | None, str | None]]:
        d: Deferred[tuple[int | None, str | None]] = Deferred()
        self.closed.addBoth(lambda r: (d.called or d.callback(r), r)[1])
        d.addTimeout(timeout, reactor)
        return d

    async def subscribe(self, token: str) -> Any:
        """Send subscribe and return the server's answer."""
        self.send_json({"@type": "subscribe", "jwt": token})
        return await self.next()


async def connect(port: int, path: str = "/ws", host: str = "127.0.0.1", origin: str | None = None) -> Client:
    url = f"ws://{host}:{port}{path}"
    factory = WebSocketClientFactory(url, origin=origin)
    factory.protocol = Client
    factory.setProtocolOptions(maxMessagePayloadSize=0, maxFramePayloadSize=0)
    endpoint = clientFromString(reactor, f"tcp:{host}:{port}:timeout=5")
    proto = factory.buildProtocol(None)
    await connectProtocol(endpoint, proto)
    d = proto.opened
    d.addTimeout(TIMEOUT, reactor)
    return await d
