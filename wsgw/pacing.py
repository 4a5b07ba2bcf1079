"""Token buckets on an injected clock: the global silent budget and per-session pacing."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` stored; time from ``clock.seconds()``."""

    __slots__ = ("_rate", "_burst", "_clock", "_tokens", "_stamp")

    def __init__(self, rate: float, burst: float, clock: IReactorTime) -> None:
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._tokens = burst
        self._stamp = clock.seconds()

    def _refill(self) -> None:
        now = self._clock.seconds()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now

    def take(self) -> bool:
        """Take one token if there is one."""
        self._refill()
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def wait(self) -> float:
        """Seconds until a token is available (0 when one is)."""
        self._refill()
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self._rate


class Pacer:
    """Delays, never drops, what goes past the rate; a bypass goes straight out.

    ``overflow`` is called once (and the queue dropped) when more than ``limit``
    frames are waiting: the reader is too slow, and its socket gets closed.
    """

    __slots__ = ("_bucket", "_send", "_clock", "_queue", "_call", "_limit", "_overflow")

    def __init__(
        self,
        rate: float,
        burst: float,
        clock: IReactorTime,
        send: Callable[[bytes], None],
        overflow: Callable[[], None],
        limit: int = 10_000,
    ) -> None:
        self._bucket = TokenBucket(rate, burst, clock) if rate > 0 else None
        self._send = send
        self._clock = clock
        self._queue: deque[bytes] | None = None  # made on first use: most sessions never queue (760 B each)
        self._call: IDelayedCall | None = None
        self._limit = limit
        self._overflow = overflow

    def submit(self, payload: bytes) -> None:
        queue = self._queue
        if self._bucket is None or (not queue and self._bucket.take()):
            self._send(payload)
            return
        if queue is None:
            queue = self._queue = deque()
        if len(queue) >= self._limit:
            self.stop()
            self._overflow()
            return
        queue.append(payload)
        self._schedule()

    def bypass(self, payload: bytes) -> None:
        """Send now, ahead of the rate: what is queued goes first (releasing it early), so order is kept."""
        queue, self._queue = self._queue, None
        while queue:
            self._send(queue.popleft())
        self._send(payload)

    @property
    def pending(self) -> int:
        return len(self._queue) if self._queue else 0

    def _schedule(self) -> None:
        if self._call is None and self._queue and self._bucket is not None:
            self._call = self._clock.callLater(self._bucket.wait(), self._drain)

    def _drain(self) -> None:
        self._call = None
        assert self._bucket is not None
        queue = self._queue
        while queue and self._bucket.take():
            self._send(queue.popleft())
        if not queue:
            self._queue = None  # back to the idle footprint once the burst is out
        self._schedule()

    def stop(self) -> None:
        """Forget what is queued and cancel the pending timer (the socket is gone)."""
        self._queue = None
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
