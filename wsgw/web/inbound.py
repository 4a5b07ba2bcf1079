"""Inbound defences applied before a frame reaches the core: Origin allow-list, flood limit; and the per-address
counts of ``wsgw.web.listener``."""

from __future__ import annotations

import fnmatch

import attrs
from twisted.internet.interfaces import IReactorTime

from wsgw.pacing import TokenBucket


@attrs.frozen
class InboundPolicy:
    """What a client may do: ``rate``/``burst`` frames per second (0 = no limit), and the allowed ``Origin``
    values (empty = any; entries may use ``*`` wildcards, e.g. ``https://*.example.org``)."""

    rate: float = 0.0
    burst: float = 0.0
    origins: tuple[str, ...] = ()

    def origin_allowed(self, origin: str | None) -> bool:
        """A request without Origin (not a browser) is allowed; a browser's Origin must match the list."""
        if not self.origins or origin is None:
            return True
        origin = origin.strip().rstrip("/").lower()
        return any(fnmatch.fnmatchcase(origin, allowed.rstrip("/").lower()) for allowed in self.origins)

    def flood_bucket(self, clock: IReactorTime) -> TokenBucket | None:
        return TokenBucket(self.rate, max(self.burst, 1.0), clock) if self.rate > 0 else None


class PeerCounts:
    """Open sockets per client address (a listener's, so the cap holds across its endpoints)."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def acquire(self, host: str, cap: int) -> bool:
        """Count one more socket for ``host``, unless ``cap`` (> 0) is reached."""
        count = self._counts.get(host, 0)
        if cap and count >= cap:
            return False
        self._counts[host] = count + 1
        return True

    def release(self, host: str) -> None:
        count = self._counts.get(host, 0) - 1
        if count > 0:
            self._counts[host] = count
        else:
            self._counts.pop(host, None)
