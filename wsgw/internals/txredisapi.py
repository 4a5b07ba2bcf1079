"""What wsgw relies on inside txredisapi, beyond its public API (pinned by tests/test_internals.py).

- ``BaseRedisProtocol`` (a ``LineReceiver``) calls ``setLineMode(extra)`` after
  each bulk string with the rest of the read, and txredisapi's own pauses the
  transport and parses ``extra`` after ``callLater(0)``: one reactor turn per
  bulk string, so a connection answered one bulk string per turn however many
  replies had arrived. ``WholeReads`` parses the rest at once: every reply of
  a read is handled in the turn that read it. (Next to the bus subscriber,
  which hands over every message of a read at once, a chat store answered one
  reply per turn fell behind: bench/RESULTS.md, "Batched bus reads".)
"""

from __future__ import annotations

from txredisapi import BaseRedisProtocol  # type: ignore[import-untyped]


class WholeReads(BaseRedisProtocol):  # type: ignore[misc]
    """txredisapi's pure-Python protocol, parsing every reply of a read in the turn that read it."""

    _rest: bytes | None = None  # the rest of the read after a bulk string, parsed next

    def dataReceived(self, data: bytes, unpause: bool = False) -> None:
        self._rest = None
        super().dataReceived(data)
        while self._rest:
            rest, self._rest = self._rest, None
            super().dataReceived(rest)

    def setLineMode(self, extra: bytes = b"") -> None:
        self.line_mode = 1
        if extra:
            self._rest = extra
