"""Frames that break RFC 6455 in more than one way (PROTOCOL.md §7: 1002, "a WebSocket protocol error (RFC 6455,
answered by Autobahn)"): Autobahn answers the first violation with its close frame and, closing already, drops the
connection at the second, then goes on reading the same frame's header. Nothing it reads may have been taken from
under it: each such frame gets the close frame 1002 and the connection's end, never an exception out of the read
(a traceback in the log per hostile frame, past the daemon's line budget)."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.logger import LogEvent, globalLogPublisher

from tests.support.daemon import StartGateway
from tests.support.rawtcp import UPGRADE, raw_connect
from tests.support.waiting import wait_until

MASK = b"\x5a\xc3\x0f\x81"


def _masked(first: int, payload: bytes, extended: bytes = b"") -> bytes:
    """A client frame with first byte ``first``, masked; ``extended``: a 16-bit length after the 126 marker."""
    length = bytes((0x80 | 126,)) + extended if extended else bytes((0x80 | len(payload),))
    return bytes((first,)) + length + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


TWICE_WRONG = {
    # a control frame over 125 bytes' length marker, then its 16-bit length not minimal (each: a violation)
    "pong, 126-length encoding": _masked(0x8A, b"hello", (5).to_bytes(2, "big")),
    "ping, 126-length encoding": _masked(0x89, b"hello", (5).to_bytes(2, "big")),
    "close, 126-length encoding": _masked(0x88, b"\x03\xe8", (2).to_bytes(2, "big")),
    "text with RSV1, 126-length encoding": _masked(0xC1, b"{}", (2).to_bytes(2, "big")),
}


@pytest.mark.parametrize("case", list(TWICE_WRONG))
@pytest_twisted.ensureDeferred
async def test_a_frame_with_two_violations_gets_1002_and_no_traceback(
        case: str, gateway: StartGateway) -> None:
    daemon = await gateway(redis=None, overrides={"websocket.auth_timeout": "0"})
    raw = await raw_connect(daemon.port)
    raw.send(UPGRADE)
    await wait_until(lambda: len(daemon.service.gateway.table) == 1, "the session")
    start = len(raw.received)
    failures: list[object] = []  # (a read's exception: Twisted's legacy ``log.err``, its key ``failure``)

    def observe(event: LogEvent) -> None:
        failure = event.get("log_failure") or event.get("failure")
        if failure is not None:
            failures.append(failure.value)

    globalLogPublisher.addObserver(observe)
    try:
        raw.send(TWICE_WRONG[case])  # one write: one read on loopback
        received = (await raw.wait_lost())[start:]
    finally:
        globalLogPublisher.removeObserver(observe)
    assert received[:1] == b"\x88" and int.from_bytes(received[2:4], "big") == 1002, received
    assert len(received) == 2 + received[1], received  # nothing after the close frame
    assert failures == []
    await wait_until(lambda: not daemon.service.gateway.table, "the session closed")
