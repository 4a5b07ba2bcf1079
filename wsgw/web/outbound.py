"""The outbound side of one client socket: framing once per payload, a bounded queue, backpressure.

``FrameCache`` frames a text payload once: a fan-out hands the same bytes
object to every recipient, so the header is built and joined to it once per
distinct payload, not once per socket.

``Outbound`` owns what one socket has not sent yet. It registers on the
transport as a streaming (push) producer, replacing twisted.web's HTTP
channel, which stays registered after the WebSocket upgrade:

- nothing pending anywhere: a frame goes straight to the socket with one
  ``send()`` (on a plain TCP transport; through ``transport.write``
  otherwise), so the common case costs no reactor round trip, no epoll
  registration and no Twisted buffer;
- what the kernel does not take, and every frame while the transport still
  holds bytes, goes to the transport, which joins what piled up into one
  write when the socket is writable again;
- past the transport's own limit (64 KiB) it pauses this producer: frames
  then wait here, and are handed over as one write when the transport has
  drained and resumes the producer;
- past ``max_bytes`` or ``max_frames`` waiting here, ``overflow`` is called
  once and the queue dropped (the protocol closes the socket with 4008), so a
  client that does not read costs bounded memory.

Writing to the socket directly only happens while the transport holds
nothing, so frames never overtake bytes Autobahn wrote (handshake answer,
pings, close frames). (The transport's ``bufferSize`` cannot be lowered to
pause earlier: Twisted also uses it as the size of each ``recv``.) Holding
frames until the end of the reactor turn to join more of them per ``send()``
was measured and lost at N = 1,000 and 10,000 (bench/RESULTS.md), so a frame
that can go out goes out at once.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from wsgw.internals.twisted import direct_socket, send_direct


def frame_header(length: int) -> bytes:
    """The header of one unmasked, final text frame of ``length`` bytes (server frames are never masked)."""
    if length < 126:
        return bytes((0x81, length))
    if length < 65536:
        return struct.pack("!BBH", 0x81, 126, length)
    return struct.pack("!BBQ", 0x81, 127, length)


class FrameCache:
    """Frames a text payload once for all the sockets it goes to (the last distinct payload is kept)."""

    __slots__ = ("_payload", "_framed")

    def __init__(self) -> None:
        self._payload: bytes | None = None
        self._framed = b""

    def frame(self, payload: bytes) -> bytes:
        """The whole frame (header and payload) for ``payload``; the same object as last time returns the same bytes."""
        if payload is self._payload:
            return self._framed
        framed = frame_header(len(payload)) + payload
        self._payload = payload
        self._framed = framed
        return framed


@implementer(IPushProducer)
class Outbound:
    """One socket's outbound frames: straight through when idle, bounded and coalesced when not."""

    __slots__ = ("_transport", "_sock", "_paused", "_queue", "_queued", "_queued_frames", "_max_bytes",
                 "_max_frames", "_overflow", "_stopped")

    def __init__(self, transport: Any, max_bytes: int, max_frames: int, overflow: Callable[[], None]) -> None:
        self._transport = transport
        self._sock = direct_socket(transport)
        self._paused = False
        self._queue: list[bytes] = []  # frames waiting while paused
        self._queued = 0
        self._queued_frames = 0
        self._max_bytes = max_bytes or (1 << 62)
        self._max_frames = max_frames or (1 << 62)
        self._overflow = overflow
        self._stopped = False
        if getattr(transport, "producer", None) is not None:
            transport.unregisterProducer()  # twisted.web's channel, left registered after the upgrade
        transport.registerProducer(self, True)

    def write(self, frame: bytes) -> None:
        """Send one whole frame (or several joined), or queue it while the transport is paused."""
        if self._paused or self._stopped:
            if not self._stopped:
                self._enqueue(frame, 1)
            return
        sock = self._sock
        if sock is not None:
            sent = send_direct(self._transport, sock, frame)
            if sent == len(frame):
                return
            if sent:
                frame = frame[sent:]
        self._transport.write(frame)

    def _enqueue(self, data: bytes, frames: int) -> None:
        self._queue.append(data)
        self._queued += len(data)
        self._queued_frames += frames
        if self._queued > self._max_bytes or self._queued_frames > self._max_frames:
            self.discard()
            self._overflow()

    def flush(self) -> None:
        """Hand whatever waits here to the transport now (before a close frame, say)."""
        chunks = self._queue
        self._queue = []
        self._queued = self._queued_frames = 0
        if chunks:
            self._transport.write(b"".join(chunks))

    def discard(self) -> None:
        """Forget what waits here and accept nothing more."""
        self._stopped = True
        self._queue = []
        self._queued = self._queued_frames = 0

    # -- IPushProducer (called by the transport) ---------------------------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        queue = self._queue
        if queue and not self._stopped:
            data = b"".join(queue) if len(queue) > 1 else queue[0]
            self._queue = []
            self._queued = self._queued_frames = 0
            self.write(data)

    def stopProducing(self) -> None:
        self.discard()
