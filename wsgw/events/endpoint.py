"""The ``/ws`` endpoint (PROTOCOL.md §2, §4): subscribed sessions are indexed for the topic handlers.

Each session gets a pacer for node events (§4.1 per-session pacing) when
pacing is on; a pacer whose backlog passes ``max_paced_frames`` reports the
session too slow. Client frames other than subscribe and unsubscribe are
ignored, as in Cells.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from wsgw.access import Access
from wsgw.interfaces import IEndpoint
from wsgw.pacing import Pacer
from wsgw.sessions import Session, SessionTable


@implementer(IEndpoint)
class EventsEndpoint:
    """``/ws`` and ``/ws/event``: sessions that receive bus events through the table's indexes."""

    name = "ws"

    def __init__(
        self,
        table: SessionTable,
        clock: IReactorTime,
        too_slow: Callable[[Session], None],
        *,
        pacing_rate: float = 30.0,
        pacing_burst: float = 20.0,
        max_paced_frames: int = 10_000,
    ) -> None:
        self._table = table
        self._clock = clock
        self._too_slow = too_slow
        self._rate = pacing_rate
        self._burst = pacing_burst
        self._limit = max_paced_frames

    def opened(self, session: Session) -> None:
        if self._rate > 0:
            session.pacer = Pacer(self._rate, self._burst, self._clock, session.connection.send,
                                  lambda: self._too_slow(session), self._limit)

    def subscribe(self, session: Session, access: Access) -> None:
        self._table.subscribe(session, access)

    def unsubscribe(self, session: Session) -> None:
        self._table.unsubscribe(session)

    def receive(self, session: Session, frame: dict[str, Any]) -> Deferred[None] | None:
        return None  # anything else on /ws is ignored, as in Cells

    def closed(self, session: Session) -> None:
        if session.pacer is not None:
            session.pacer.stop()
        self._table.unsubscribe(session)
