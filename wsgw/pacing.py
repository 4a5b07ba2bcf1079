"""Token buckets on an injected clock: the global silent budget, per-session pacing, the inbound flood limit."""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime


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
