"""Fakes shipped with the package, for tests of the core and of code built on it."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer, provider

from wsgw.interfaces import IConnection


@implementer(IConnection)
class RecordingConnection:
    """An IConnection that records what is sent and how it was closed."""

    def __init__(self, peer: str = "test") -> None:
        self.peer = peer
        self.sent: list[bytes] = []
        self.closed: tuple[int, str] | None = None
        self.aborted = False

    def send(self, payload: bytes) -> None:
        assert isinstance(payload, bytes)
        self.sent.append(payload)

    def close(self, code: int, reason: str) -> None:
        if self.closed is None:
            self.closed = (code, reason)

    def abort(self) -> None:
        self.aborted = True

    @property
    def frames(self) -> list[Any]:
        """What was sent, decoded."""
        return [json.loads(p) for p in self.sent]

    def clear(self) -> list[Any]:
        frames = self.frames
        self.sent.clear()
        return frames


def fired(d: Deferred[Any]) -> Any:
    """The result of a Deferred that has already fired (raises its failure; fails if it has not fired)."""
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


class LoggedFailures:
    """Collects every log event carrying a traceback (``log_failure``) while open (a context manager)."""

    def __init__(self) -> None:
        self.events: list[LogEvent] = []

        @provider(ILogObserver)
        def observe(event: LogEvent) -> None:
            if event.get("log_failure") is not None:
                self.events.append(event)

        self._observer = observe

    def __enter__(self) -> LoggedFailures:
        globalLogPublisher.addObserver(self._observer)
        return self

    def __exit__(self, *exc: object) -> None:
        globalLogPublisher.removeObserver(self._observer)

    def describe(self) -> str:
        return "\n".join(f"{e.get('log_format')!r}: {e['log_failure'].getTraceback()}" for e in self.events)
