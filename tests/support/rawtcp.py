"""Raw TCP clients on the reactor, for what a WebSocket or HTTP client library would not send: half-open
handshakes, trickled headers, HTTP/1.0 upgrades, idle sockets. Every wait is bounded."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

TIMEOUT = 5.0

UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
"""A valid WebSocket upgrade request for /ws (RFC 6455 §1.2's sample key)."""


class Raw(Protocol):
    """Collects what the server sends; ``lost`` fires (with all of it) when the server closes."""

    def __init__(self) -> None:
        self.received = b""
        self.lost: Deferred[bytes] = Deferred()
        self.lost_at: float | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost_at = reactor.seconds()
        self.lost.callback(self.received)

    @property
    def open(self) -> bool:
        return not self.lost.called

    def send(self, data: bytes) -> None:
        if self.open:
            self.transport.write(data)  # type: ignore[union-attr]

    def close(self) -> None:
        if self.open:
            self.transport.abortConnection()  # type: ignore[union-attr]

    def wait_lost(self, timeout: float = TIMEOUT) -> Deferred[bytes]:
        """What the server sent, once it closed the socket; fails after ``timeout`` seconds."""
        d: Deferred[bytes] = Deferred()
        self.lost.addBoth(lambda r: (d.called or d.callback(r), r)[1])
        return d.addTimeout(timeout, reactor)


async def raw_connect(port: int, host: str = "127.0.0.1") -> Raw:
    """A connected raw TCP socket (the server has not necessarily accepted it yet)."""
    proto = Raw()
    d = connectProtocol(TCP4ClientEndpoint(reactor, host, port, timeout=TIMEOUT), proto)
    await d.addTimeout(TIMEOUT, reactor)
    return proto


async def exchange(port: int, data: bytes, timeout: float = TIMEOUT) -> bytes:
    """Send ``data`` and return everything the server answers up to its close (a response followed by close:
    send ``Connection: close`` or use HTTP/1.0 in ``data``)."""
    raw = await raw_connect(port)
    raw.send(data)
    try:
        return await raw.wait_lost(timeout)
    finally:
        raw.close()


def head(answer: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    """The status line and headers (lower-cased names) of a raw HTTP answer."""
    top = answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    headers = {}
    for line in top[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return top[0], headers


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One final client frame (RFC 6455 §5.2: masked; the all-zero key leaves the payload as it is), e.g.
    ``client_frame(0x1, text)`` or ``client_frame(0x8, (1000).to_bytes(2, "big"))`` for a close."""
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    elif length < 65536:
        header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
    return header + b"\0\0\0\0" + payload
