"""The outbound side of one client socket: framing once per payload, a bounded queue, backpressure.

``FrameCache`` frames a text payload once: a fan-out hands the same bytes
object to every recipient, so the header is built and joined to it once per
distinct payload, not once per socket.

``Outbound`` writes one socket's frames. It registers on the transport as a
streaming (push) producer, replacing twisted.web's HTTP channel, which stays
registered after the WebSocket upgrade:

- nothing pending: a frame goes straight to the socket with one ``send()``
  (on a plain TCP transport; through ``transport.write`` otherwise), so the
  common case costs no reactor round trip, no epoll registration and no
  Twisted buffer;
- what the kernel does not take, and every frame while the transport still
  holds bytes, goes to the transport, which joins what piled up into one
  write when the socket is writable again;
- past the transport's own limit (64 KiB) the transport pauses this
  producer, which pauses the session's ``Flow``: frames then wait there,
  bounded and accounted (``wsgw.flow``), and pongs here (at most one).

Writing to the socket directly only happens while the transport holds
nothing, so frames never overtake bytes Autobahn wrote (handshake answer,
pings, close frames). (The transport's ``bufferSize`` cannot be lowered to
pause earlier: Twisted also uses it as the size of each ``recv``.) Holding
frames until the end of the reactor turn to join more of them per ``send()``
was measured and lost at N = 1,000 and 10,000 while the bus handed over one
message per turn (bench/RESULTS.md), so a frame that can go out goes out at
once, except inside a ``WriteBatch``:

``WriteBatch`` is open while the bus delivers the messages of one read from
Redis (``wsgw.bus.redis``). Meanwhile each socket's frames wait, in order (a
list of the shared frames, never a copy: 10,000 sockets times a 64 KiB read
would be 640 MB), and at the batch's end each socket's frames are written as
above, with one ``sendmsg()`` (bench/RESULTS.md, "Batched bus reads"). The flow counts
them as written when they are handed over, as it does for bytes the transport
holds: a batch adds at most what one read brings, and its write pauses
the flow when it fills the transport. Anything that writes to the socket
without the Outbound (a close frame) calls ``flush_batch`` first.

``Outbound.send(payload)`` is what the session's flow writes through, once per
delivery: it frames the payload with the endpoint's ``FrameCache`` and writes
it, unless the socket stopped being open (``closing()``: the server sent or
is about to send a close frame, dropped the connection, or lost it; then
nothing more is written, as Autobahn's own state would say). This module and
``wsgw.internals.direct`` are compiled by mypyc (``setup.py`` ``COMPILED``), so
a delivery runs no Python frame from the flow to the ``send()`` (bench/RESULTS.md,
"The send path"). The IPushProducer declaration is ``classImplements``, not the
class decorator, which would make ``Outbound`` an ordinary Python class to mypyc.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import classImplements

from wsgw.flow import Flow
from wsgw.internals.direct import IOV_MAX, direct_socket, send_direct, send_direct_many

_log = Logger(namespace="wsgw.web.outbound")  # (named: a compiled module has no frame to name it from)


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


class WriteBatch:
    """While open (``begin()`` to ``end()``), the frames each ``Outbound`` made with it is given wait; at
    ``end()`` each socket's frames are written in one write, sockets in the order of their first frame. One
    per process, shared by every socket and handed to the bus (``wsgw.bus.redis.RedisBus``)."""

    __slots__ = ("open", "_dirty")

    def __init__(self) -> None:
        self.open = False
        self._dirty: list[Outbound] = []

    def begin(self) -> None:
        self.open = True

    def end(self) -> None:
        """Close the batch and write what each socket was given during it; a socket's failure is logged, the
        others are written."""
        self.open = False
        dirty, self._dirty = self._dirty, []
        for out in dirty:
            try:
                out.flush_batch()
            except Exception:  # noqa: BLE001 - isolate a broken socket, as fan_out does
                _log.failure("writing a batch of frames to a socket failed")


class Outbound:
    """One socket's writes, and its flow control handed to the session's ``wsgw.flow.Flow``.

    ``send_pong(payload)`` is the protocol's own pong; ``flow`` is set once the session exists; ``batch``: the
    process's ``WriteBatch`` (None: every frame is written at once); ``frames``: the endpoint's ``FrameCache``
    (``send``'s framing; None: one of its own). ``open`` is True until ``closing()``.
    """

    __slots__ = ("_transport", "_sock", "_send_pong", "_pong", "flow", "paused", "_batch", "_pending", "_frames",
                 "open")

    def __init__(self, transport: Any, send_pong: Callable[[bytes], None], batch: WriteBatch | None = None,
                 frames: FrameCache | None = None) -> None:
        self.open = True
        self._frames = frames if frames is not None else FrameCache()
        self._transport = transport
        self._sock = direct_socket(transport)
        self._send_pong = send_pong
        self._pong: bytes | None = None
        self.flow: Flow | None = None
        self.paused = False
        self._batch = batch
        self._pending: bytes | list[bytes] | None = None  # this socket's frames of the open batch
        if getattr(transport, "producer", None) is not None:
            transport.unregisterProducer()  # twisted.web's channel, left registered after the upgrade
        transport.registerProducer(self, True)

    def send(self, payload: bytes) -> None:
        """Frame the text message ``payload`` (the ``FrameCache``: once for every socket it goes to) and write it
        as ``write`` does; nothing once ``closing()`` was called. The session's flow writes through this."""
        if self.open:
            self.write(self._frames.frame(payload))

    def closing(self) -> None:
        """The socket is no longer open (a close frame goes or went out, the connection was dropped or lost):
        ``send`` writes nothing from now on. Call ``flush_batch`` first for what was given before."""
        self.open = False

    def write(self, frame: bytes) -> None:
        """Send one whole frame: to the socket if the transport holds nothing, else to the transport; while a
        batch is open, at its end with the socket's other frames of the batch."""
        batch = self._batch
        if batch is not None and batch.open:
            pending = self._pending
            if pending is None:
                self._pending = frame
                batch._dirty.append(self)
            elif isinstance(pending, bytes):
                self._pending = [pending, frame]
            else:
                pending.append(frame)
            return
        self._write(frame)

    def flush_batch(self) -> None:
        """Write now the frames this socket was given in the open batch (before a close frame; at its end): one
        ``sendmsg()`` of them all (frames are shared by every recipient: they are not copied), what the kernel
        does not take joined into one write to the transport."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        if isinstance(pending, bytes):
            self._write(pending)
            return
        sock = self._sock
        if sock is None:
            self._transport.write(b"".join(pending))
            return
        for start in range(0, len(pending), IOV_MAX):
            chunk = pending[start:start + IOV_MAX] if len(pending) > IOV_MAX else pending
            sent = send_direct_many(self._transport, sock, chunk)
            if sent != sum(map(len, chunk)):
                self._transport.write(b"".join(pending[start:])[sent:])
                return

    def _write(self, frame: bytes) -> None:
        sock = self._sock
        if sock is not None:
            sent = send_direct(self._transport, sock, frame)
            if sent == len(frame):
                return
            if sent:
                frame = frame[sent:]
        self._transport.write(frame)

    def pong(self, payload: bytes) -> None:
        """Answer a ping; while paused only the latest ping is answered, on resume (RFC 6455 §5.5.3), so a
        peer that pings and never reads makes the server hold one pong, not one per ping."""
        if self.paused:
            self._pong = payload
        else:
            self._send_pong(payload)

    # -- IPushProducer (called by the transport) ---------------------------

    def pauseProducing(self) -> None:
        self.paused = True
        if self.flow is not None:
            self.flow.pause()

    def resumeProducing(self) -> None:
        self.paused = False
        pong, self._pong = self._pong, None
        if pong is not None:
            self._send_pong(pong)
        if self.flow is not None and not self.paused:
            self.flow.resume()

    def stopProducing(self) -> None:
        self._pong = None
        if self.flow is not None:
            self.flow.stop()


classImplements(Outbound, IPushProducer)
