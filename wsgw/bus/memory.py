"""The embedded in-process bus: the default when no Redis is configured (one gateway instance only).

Delivery is immediate and in publish order: ``publish`` hands the message to
every listener before it returns, unless it is called *from* a listener, in
which case the message is queued and delivered as soon as the current
delivery finishes. So a listener is never re-entered, and every listener sees
all messages in the same global order (hence in order per topic). A listener's
exception is logged and never reaches the publisher or the other listeners.
No reactor is involved.

Unlike Redis (which delivers on a later reactor turn), a top-level publish has
delivered by the time it returns; code must not rely on either.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from wsgw.bus import check_publish, check_topics, deliver
from wsgw.interfaces import IBus

Listener = Callable[[str, bytes], Any]


@implementer(IBus)
class MemoryBus(service.Service):
    """IBus in one process: ``publish`` delivers to every ``listen`` callback of this bus."""

    _log = Logger()
    connected = True
    state = "embedded"

    def __init__(self, topics: Mapping[str, str]) -> None:
        self._topics = check_topics(topics)
        self._listeners: list[Listener] = []
        self._pending: deque[tuple[str, bytes]] = deque()
        self._delivering = False

    @property
    def topics(self) -> Mapping[str, str]:
        """The topic -> channel map (a copy)."""
        return dict(self._topics)

    def listen(self, callback: Listener) -> None:
        self._listeners.append(callback)

    def whenConnected(self) -> Deferred[None]:
        """Already fired: the embedded bus is always up (same call as on RedisBus)."""
        return succeed(None)

    whenSubscribed = whenConnected

    def publish(self, topic: str, payload: bytes) -> Deferred[None]:
        """Deliver ``payload`` on ``topic`` (see the module docstring for when); ValueError for an unknown topic,
        TypeError for a payload that is not bytes. The Deferred has fired already."""
        check_publish(self._topics, topic, payload)
        self._pending.append((topic, payload))
        if not self._delivering:
            self._delivering = True
            try:
                while self._pending:
                    queued_topic, queued_payload = self._pending.popleft()
                    deliver(self._listeners, queued_topic, queued_payload, self._log)
            finally:
                self._delivering = False
        return succeed(None)
