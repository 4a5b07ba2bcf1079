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
- with a ``TurnFlusher``, the frames a socket is given during one reactor
  turn are written at the end of that turn as one ``send()``;
- past ``max_bytes`` or ``max_frames`` waiting here, ``overflow`` is called
  once and the queue dropped (the protocol closes the socket with 4008), so a
  client that does not read costs bounded memory.

Writing to the socket directly only happens while the transport holds
nothing, so frames never overtake bytes Autobahn wrote (handshake answer,
pings, close frames). (The transport's ``bufferSize`` cannot be lowered to
pause earlier: Twisted also uses it as the size of each ``recv``.)
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from zope.interface import implementer


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


class TurnFlusher:
    """Sends, at the end of the reactor turn, what each socket was given during it, as one write per socket.

    A burst of events handled in one turn (several bus messages read at once) then costs each recipient
    one ``send()`` instead of one per frame. Shared by every socket of a daemon; one ``callLater(0)`` per
    turn that wrote anything.
    """

    __slots__ = ("_clock", "_dirty", "_call")

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._dirty: list[Outbound] = []
        self._call: IDelayedCall | None = None

    def add(self, out: Outbound) -> None:
        self._dirty.append(out)
        if self._call is None:
            self._call = self._clock.callLater(0, self.flush)

    def flush(self) -> None:
        """Write out every socket's frames of this turn now."""
        self._call = None
        dirty, self._dirty = self._dirty, []
        for out in dirty:
            out.end_turn()


def _buffered(transport: Any) -> int:
    """Bytes a Twisted ``FileDescriptor`` holds and has not written yet."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


def _direct_socket(transport: Any) -> socket.socket | None:
    """The transport's socket when frames may be sent on it directly (plain TCP), else None (TLS, tests)."""
    if isinstance(transport, tcp.Connection) and not getattr(transport, "TLS", False):
        sock = getattr(transport, "socket", None)
        try:
            _buffered(transport)
        except (AttributeError, TypeError):
            return None  # not the FileDescriptor this module knows: go through transport.write
        if isinstance(sock, socket.socket):
            return sock
    return None


@implementer(IPushProducer)
class Outbound:
    """One socket's outbound frames: straight through when idle, bounded and coalesced when not."""

    __slots__ = ("_transport", "_sock", "_paused", "_queue", "_queued", "_queued_frames", "_max_bytes",
                 "_max_frames", "_overflow", "_stopped", "_flusher", "_turn")

    def __init__(self, transport: Any, max_bytes: int, max_frames: int, overflow: Callable[[], None],
                 flusher: TurnFlusher | None = None) -> None:
        self._transport = transport
        self._sock = _direct_socket(transport)
        self._paused = False
        self._queue: list[bytes] = []  # while paused: chunks (a frame, or a turn's frames joined)
        self._queued = 0
        self._queued_frames = 0
        self._max_bytes = max_bytes or (1 << 62)
        self._max_frames = max_frames or (1 << 62)
        self._overflow = overflow
        self._stopped = False
        self._flusher = flusher
        self._turn: list[bytes] | None = None  # frames given during this reactor turn (with a flusher)
        if getattr(transport, "producer", None) is not None:
            transport.unregisterProducer()  # twisted.web's channel, left registered after the upgrade
        transport.registerProducer(self, True)

    @property
    def pending(self) -> tuple[int, int]:
        """Frames and bytes waiting here (not counting what the transport and the kernel hold)."""
        return self._queued_frames, self._queued

    def write(self, frame: bytes) -> None:
        """Send one whole frame (at the end of the turn with a flusher), or queue it while paused."""
        if self._stopped:
            return
        if self._paused:
            self._enqueue(frame, 1)
        elif self._flusher is None:
            self._send(frame)
        elif self._turn is None:
            self._turn = [frame]
            self._flusher.add(self)
        else:
            self._turn.append(frame)

    def end_turn(self) -> None:
        """Send what this turn gave, as one write (called by the flusher)."""
        turn = self._turn
        if turn is None or self._stopped:
            return
        self._turn = None
        data = turn[0] if len(turn) == 1 else b"".join(turn)
        if self._paused:
            self._enqueue(data, len(turn))
        else:
            self._send(data)

    def _enqueue(self, data: bytes, frames: int) -> None:
        self._queue.append(data)
        self._queued += len(data)
        self._queued_frames += frames
        if self._queued > self._max_bytes or self._queued_frames > self._max_frames:
            self.discard()
            self._overflow()

    def _send(self, data: bytes) -> None:
        sock = self._sock
        transport = self._transport
        if sock is not None and not transport._tempDataLen and not transport.dataBuffer:
            try:
                sent = sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                sent = 0  # the transport meets the same error on its next write and closes properly
            if sent == len(data):
                return
            if sent:
                data = data[sent:]
        transport.write(data)

    def flush(self) -> None:
        """Hand whatever waits here to the transport now (before a close frame, say)."""
        chunks = self._queue
        if self._turn:
            chunks = chunks + self._turn
        self._turn = None
        self._queue = []
        self._queued = self._queued_frames = 0
        if chunks:
            self._transport.write(b"".join(chunks))

    def discard(self) -> None:
        """Forget what waits here and accept nothing more."""
        self._stopped = True
        self._queue = []
        self._turn = None
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
            self._send(data)

    def stopProducing(self) -> None:
        self.discard()
