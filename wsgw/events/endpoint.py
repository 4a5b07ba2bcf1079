"""The ``/ws`` endpoint (PROTOCOL.md §2, §4): subscribed sessions are indexed for the topic handlers.

Each session's flow paces its node events (§4.1 per-session pacing) when
pacing is on: a token bucket of ``pacing_rate`` frames per second and
``pacing_burst``, a held frame waiting at most ``pacing_max_delay`` seconds.
Client frames other than subscribe and unsubscribe are ignored, as in Cells.
``observe_pacing`` (settable) is handed to each paced flow (``Flow.pace``'s ``observe``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from wsgw.access import Access
from wsgw.interfaces import IEndpoint
from wsgw.pacing import TokenBucket
from wsgw.sessions import Session, SessionTable


@implementer(IEndpoint)
class EventsEndpoint:
    """``/ws`` and ``/ws/event``: sessions that receive bus events through the table's indexes."""

    name = "ws"

    def __init__(
        self,
        table: SessionTable,
        clock: IReactorTime,
        *,
        pacing_rate: float = 30.0,
        pacing_burst: float = 20.0,
        pacing_max_delay: float = 2.0,
    ) -> None:
        self._table = table
        self._clock = clock
        self._rate = pacing_rate
        self._burst = pacing_burst
        self._max_delay = pacing_max_delay
        self.observe_pacing: Callable[[float], object] | None = None

    def set_pacing(self, rate: float, burst: float, max_delay: float) -> None:
        """Pace the sockets opened from now on so (SIGHUP, wsgw.reload); those already open keep their pacing."""
        self._rate, self._burst, self._max_delay = rate, burst, max_delay

    def opened(self, session: Session) -> None:
        if self._rate > 0:
            session.flow.pace(TokenBucket(self._rate, self._burst, self._clock), self._clock, self._max_delay,
                              self.observe_pacing)

    def subscribe(self, session: Session, access: Access) -> None:
        self._table.subscribe(session, access)

    def unsubscribe(self, session: Session) -> None:
        self._table.unsubscribe(session)

    def receive(self, session: Session, frame: dict[str, Any], size: int = 0) -> Deferred[None] | None:
        return None  # anything else on /ws is ignored, as in Cells

    def closed(self, session: Session) -> None:
        self._table.unsubscribe(session)
