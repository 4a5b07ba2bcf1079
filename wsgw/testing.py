"""Fakes shipped with the package, for tests of the core and of code built on it."""

from __future__ import annotations

import json
from typing import Any

from zope.interface import implementer

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
