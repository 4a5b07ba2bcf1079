"""One socket's outbound flow: every frame the server has for it and has not written yet (PROTOCOL.md §4.1).

A ``Flow`` is the one place where frames for a socket wait, whatever they
are (node events, tasks, replies, chat), and it accounts for all of them:

- **Pacing** (§4.1 per-session pacing): a paced frame (a node event) goes out
  when the socket's token bucket has a token, else it is *held*, in order.
  Pacing smooths a trickle and never turns a burst into loss: a held frame
  waits at most ``max_delay`` seconds, then it goes out at the socket's own
  speed with everything held before it. An Optimistic frame goes out at once,
  after what is held (the held frames are released early: order is kept).
- **Backpressure**: while the connection is *paused* (the kernel's and the
  transport's buffers are full: the client is not reading) frames wait here,
  *blocked*, and go out in order when it resumes.
- **One byte bound** for everything waiting here, held and blocked alike
  (``max_bytes``; each frame costs its length plus ``ENTRY_COST``), and for
  the frames for this socket that wait elsewhere and told the flow so
  (``hold_outside``: a chat room's broadcasts while the socket loads the room). Past it, a
  connection that is not paused gets its held frames at once (a burst reaches a
  prompt reader whole, in order); a paused one has stopped reading: every
  frame is dropped and ``overflow`` is called once (the gateway closes the
  socket with 4008).
- **Suspended while an access is re-derived** (§3.1): ``suspend()`` makes every
  frame wait, blocked, until ``unsuspend()`` (after the gateway re-filtered them
  by the new access), so a slow access backend never lets an old scope through.
- **Access changes apply to what waits** (§3.1, §4.1): each frame carries the
  *scope* it was produced for (``Scope``: a workspace view, a login, a room...;
  None for replies, which are kept); ``refilter(keep)`` drops the waiting frames
  whose scope ``keep`` refuses, so that after a re-subscribe, an unsubscribe or
  a re-authorization nothing waiting goes out that the new access would not
  have produced.

A held frame's wait is measured when it is released, from the time kept with it
(``pace``'s ``observe``: the ``wsgw_pacing_delay_seconds`` histogram); frames
that were never held cost nothing more.

Frames go out through ``write(payload)``, which writes one text frame now (it may
call ``pause()`` before it returns). Times come from the injected clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from wsgw.pacing import TokenBucket

ENTRY_COST = 64  # bytes a waiting frame costs beyond its payload (a tuple and a deque slot; payloads are shared)


class Scope(Protocol):
    """What access a frame was produced for (the flow itself only hands it to ``refilter``'s ``keep``)."""

    def admits(self, session: Any) -> bool:
        """Whether ``session``, with the access it holds now, would be sent this frame."""


def _nothing(*_: object) -> None:
    """What a stopped flow's callbacks become."""


class Flow:
    """One socket's frames not yet written: held by pacing, or blocked while the connection is paused.

    ``write(payload)`` writes one frame now; ``overflow()`` (settable) is called once when a paused
    connection lets more than ``max_bytes`` pile up (everything waiting is dropped first). Paced frames are not paced
    until ``pace`` is called.
    """

    __slots__ = ("_write", "_clock", "_bucket", "_max_delay", "_max_bytes", "overflow", "_held", "_blocked",
                 "_bytes", "_outside", "_paused", "_suspended", "_stopped", "_direct", "_call", "_observe")

    def __init__(self, write: Callable[[bytes], None], overflow: Callable[[], None] = lambda: None, *,
                 max_bytes: int = 4 << 20) -> None:
        self._write = write
        self.overflow = overflow
        self._max_bytes = max_bytes
        self._clock: IReactorTime | None = None
        self._bucket: TokenBucket | None = None
        self._max_delay = 0.0
        # made on first use: most sockets never wait (an empty deque is 760 bytes)
        self._held: deque[tuple[bytes, Scope | None, float]] | None = None
        self._blocked: deque[tuple[bytes, Scope | None]] | None = None
        self._bytes = 0  # everything counted against max_bytes, _outside included
        self._outside = 0  # bytes of frames waiting elsewhere (hold_outside)
        self._paused = False
        self._suspended = False
        self._stopped = False
        self._direct = True  # not paused nor suspended, nothing blocked, not stopped: a frame can be written now
        self._call: IDelayedCall | None = None
        self._observe: Callable[[float], object] | None = None

    def pace(self, bucket: TokenBucket, clock: IReactorTime, max_delay: float,
             observe: Callable[[float], object] | None = None) -> None:
        """Pace the paced frames by ``bucket``; a held frame waits at most ``max_delay`` seconds on ``clock``.
        ``observe``, if given, is called with each held frame's wait in seconds (from being held to being
        released), as it is released; frames not held are not observed."""
        self._bucket = bucket
        self._clock = clock
        self._max_delay = max_delay
        self._observe = observe

    # -- frames in ---------------------------------------------------------

    def send(self, payload: bytes, scope: Scope | None = None) -> None:
        """A frame that is not paced (a reply, a task, an IDM, activity or chat frame): out now, or blocked."""
        if self._direct:
            self._write(payload)
        elif not self._stopped:
            self._block(payload, scope)

    def paced(self, payload: bytes, scope: Scope | None = None) -> None:
        """A paced frame (a node event): out now if the bucket has a token and nothing is held, else held."""
        bucket = self._bucket
        if bucket is None or (self._held is None and bucket.take()):
            if self._direct:  # (send() inlined: this runs once per delivery of every node event)
                self._write(payload)
            elif not self._stopped:
                self._block(payload, scope)
            return
        if self._stopped:
            return
        held = self._held
        if held is None:
            held = self._held = deque()
        assert self._clock is not None
        held.append((payload, scope, self._clock.seconds()))
        self._bytes += len(payload) + ENTRY_COST
        if self._bytes > self._max_bytes:
            self._over()
        elif self._call is None:
            self._schedule()

    def optimistic(self, payload: bytes, scope: Scope | None = None) -> None:
        """A frame past the pacing (an Optimistic node event): out now, after everything held."""
        if self._held is not None:
            self._release(len(self._held))
        self.send(payload, scope)

    def hold_outside(self, size: int) -> bool:
        """Count ``size`` bytes of frames for this socket that wait elsewhere (a chat room's broadcasts while the
        socket loads the room) against the one byte bound, until ``release_outside``. Past the bound, as for
        frames waiting here: a connection that is not paused gets its paced frames at once, and if that is not
        enough everything is dropped and ``overflow`` called. Returns False when the flow is stopped (then, or
        already): the caller drops what it holds."""
        if self._stopped:
            return False
        self._outside += size
        self._bytes += size
        if self._bytes > self._max_bytes:
            self._over()
        return not self._stopped

    def release_outside(self, size: int) -> None:
        """Stop counting ``size`` bytes counted by ``hold_outside`` (they were sent or dropped)."""
        if not self._stopped:
            self._outside -= size
            self._bytes -= size

    # -- the connection ----------------------------------------------------

    def pause(self) -> None:
        """The connection cannot take more now (its buffers are full)."""
        self._paused = True
        self._direct = False

    def resume(self) -> None:
        """The connection drained: write what is blocked, in order, until it pauses again (unless suspended)."""
        self._paused = False
        blocked = self._blocked
        while blocked and not self._paused and not self._suspended:
            payload, _ = blocked.popleft()
            self._bytes -= len(payload) + ENTRY_COST
            self._write(payload)
        if not blocked:
            self._blocked = None
            self._direct = not self._paused and not self._suspended and not self._stopped

    def suspend(self) -> None:
        """Write nothing until ``unsuspend``: every frame waits, blocked (the session's access is being re-derived,
        PROTOCOL.md §3.1)."""
        self._suspended = True
        self._direct = False

    def unsuspend(self) -> None:
        """Write what waited (call ``refilter`` first with the new access), unless the connection is paused."""
        self._suspended = False
        if not self._paused:
            self.resume()

    def flush(self) -> None:
        """Write everything blocked now, paused or not (before a close frame: the transport buffers it); nothing
        while suspended (what waits is of an access being re-derived: it is dropped with the socket)."""
        if self._suspended:
            return
        blocked, self._blocked = self._blocked, None
        for payload, _ in blocked or ():
            self._bytes -= len(payload) + ENTRY_COST
            self._write(payload)
        self._direct = not self._paused and not self._stopped

    def release(self) -> None:
        """Let every held frame go out now (shutdown: what was paced is not lost)."""
        if self._held is not None:
            self._release(len(self._held))

    def refilter(self, keep: Callable[[Scope], bool]) -> int:
        """Drop the waiting frames whose scope ``keep`` refuses (frames without a scope are kept); returns how many.

        Called after every access change of the socket, with the new access (PROTOCOL.md §3.1, §4.1).
        """
        before = self.waiting[0]
        held = deque(entry for entry in self._held or () if entry[1] is None or keep(entry[1]))
        blocked = deque(entry for entry in self._blocked or () if entry[1] is None or keep(entry[1]))
        self._held = held or None
        self._blocked = blocked or None
        if self._held is None:
            self._cancel()
        self._bytes = self._outside + sum(len(entry[0]) + ENTRY_COST for entry in held) + sum(
            len(entry[0]) + ENTRY_COST for entry in blocked)
        return before - len(held) - len(blocked)

    def stop(self) -> None:
        """Forget everything waiting and accept nothing more (the socket is gone)."""
        self._stopped = True
        self._direct = False
        self._held = self._blocked = None
        self._bytes = self._outside = 0
        self._cancel()
        # the socket's callbacks go: they hold the connection and the session, which hold this flow (a cycle
        # the collector would have to find; bench/RESULTS.md, "Memory and GC")
        self._write = self.overflow = _nothing

    @property
    def suspended(self) -> bool:
        """Whether frames wait for ``unsuspend`` (an access being re-derived), the connection not paused."""
        return self._suspended and not self._paused

    @property
    def stopped(self) -> bool:
        """Whether ``stop`` was called (the socket is closing or gone): nothing more is written."""
        return self._stopped

    @property
    def waiting(self) -> tuple[int, int]:
        """``(frames, bytes)`` waiting here (bytes as counted against ``max_bytes``, those held outside too)."""
        frames = (len(self._held) if self._held else 0) + (len(self._blocked) if self._blocked else 0)
        return frames, self._bytes

    # -- inside ------------------------------------------------------------

    def _block(self, payload: bytes, scope: Scope | None) -> None:
        blocked = self._blocked
        if blocked is None:
            blocked = self._blocked = deque()
            self._direct = False
        blocked.append((payload, scope))
        self._bytes += len(payload) + ENTRY_COST
        if self._bytes > self._max_bytes:
            self._over()

    def _over(self) -> None:
        """Past the byte bound: a prompt reader gets what is held now; one that stopped reading is dropped."""
        if not self._paused and self._held is not None:
            self._release(len(self._held))
        if self._bytes > self._max_bytes:
            overflow = self.overflow
            self.stop()
            overflow()

    def _release(self, count: int) -> None:
        """Send the first ``count`` held frames (blocked behind what is blocked, if the connection pauses)."""
        held = self._held
        assert held is not None
        observe, now = self._observe, 0.0
        if observe is not None and count and self._clock is not None:
            now = self._clock.seconds()
        else:
            observe = None
        for _ in range(count):
            payload, scope, since = held.popleft()
            self._bytes -= len(payload) + ENTRY_COST
            if observe is not None:
                observe(now - since)
            self.send(payload, scope)
            if self._stopped:
                return
        if not held:
            self._held = None
            self._cancel()

    def _schedule(self) -> None:
        held, bucket = self._held, self._bucket
        if held and bucket is not None and self._clock is not None:
            due = held[0][2] + self._max_delay - self._clock.seconds()
            self._call = self._clock.callLater(max(0.0, min(bucket.wait(), due)), self._drain)

    def _drain(self) -> None:
        self._call = None
        held, bucket = self._held, self._bucket
        assert bucket is not None and self._clock is not None
        if not held:
            return
        overdue = self._clock.seconds() - self._max_delay
        count = 0
        for _, _, since in held:
            if since > overdue and not bucket.take():
                break
            count += 1
        self._release(count)
        if self._held is not None and self._call is None:
            self._schedule()

    def _cancel(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
