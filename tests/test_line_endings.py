"""A request head whose lines do not end in CRLF is answered ``400 Bad Request`` at once, on both listeners
(wsgw.internals.twisted.StrictLineChannel): it used to be held until the handshake deadline, then answered 408.

RFC 9112 §2.2 lets a recipient accept a bare LF as a line terminator or not; wsgw does not (twisted.web, the
upgrade fast path and Autobahn all end lines at CRLF), so it must say so promptly. A CRLF split over two reads
is still one line end, and a body is never looked at.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.support.daemon import StartGateway
from tests.support.rawtcp import UPGRADE, raw_connect
from tests.support.waiting import wait_until

DEADLINE = 10.0  # [server] handshake_timeout: what a held request would wait for
PROMPT = 2.0  # seconds within which a refusal must arrive (a loaded test machine included)
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"


async def _sent(port: int, *parts: bytes, guard: Any = None) -> tuple[bytes, float]:
    """What the server answered ``parts`` up to its close, and in how many seconds; with ``guard`` (the port's
    listener's), each part is read before the next is sent."""
    raw: Any = await raw_connect(port)
    start = reactor.seconds()
    for i, part in enumerate(parts):
        if i:
            await wait_until(lambda: any(t.received for t in guard._tickets.values()), "the first part read")
        raw.send(part)
    answer = await raw.wait_lost(DEADLINE + 5)
    return answer, raw.lost_at - start


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("request_bytes", [
    HEALTHZ.replace(b"\r\n", b"\n"),  # every line ends in a bare LF
    UPGRADE.replace(b"\r\n", b"\n"),  # a WebSocket upgrade so
    HEALTHZ.replace(b"\r\n", b"\n", 2)[:-2],  # the request line and a field end in LF, then CRLF lines (unfinished)
    HEALTHZ[:20] + b"\rX" + HEALTHZ[20:],  # a CR followed by something else than LF, then CRLF lines
    HEALTHZ.replace(b"\r\n", b"\r"),  # every line ends in a bare CR
    b"GET /healthz HTTP/1.1\r\nHost: h\n\n",  # the last field and the blank line
], ids=["all LF", "upgrade LF", "some LF", "a CR", "all CR", "final LF"])
async def test_a_line_not_ended_by_crlf_is_refused_at_once(gateway: StartGateway, request_bytes: bytes) -> None:
    daemon = await gateway(redis=None, admin="tcp:0:interface=127.0.0.1",
                           overrides={"server.handshake_timeout": str(DEADLINE)})
    for port in (daemon.port, daemon.admin_port):
        answer, seconds = await _sent(port, request_bytes)
        assert answer == b"HTTP/1.1 400 Bad Request\r\n\r\n", (port, answer)
        assert seconds < PROMPT, seconds
    assert daemon.service.public_guard.refused["handshake_timeout"] == 0


@pytest_twisted.ensureDeferred
async def test_a_crlf_split_over_two_reads_still_ends_the_line(gateway: StartGateway) -> None:
    daemon = await gateway(redis=None, overrides={"server.handshake_timeout": str(DEADLINE)})
    for cut in (HEALTHZ.index(b"\r\n") + 1, len(HEALTHZ) - 1, len(HEALTHZ) - 3):
        answer, _ = await _sent(daemon.port, HEALTHZ[:cut], HEALTHZ[cut:], guard=daemon.service.public_guard)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\nok\n"), (cut, answer)


@pytest_twisted.ensureDeferred
async def test_a_body_with_bare_lfs_is_not_a_head(gateway: StartGateway) -> None:
    """The public routes take no body (413) and the operator's /publish takes JSON: either way a bare LF in a body
    is the body's business, answered as before."""
    daemon = await gateway(redis=None, overrides={"server.handshake_timeout": str(DEADLINE)})
    body = b"a\nb\rc\n\n"
    request = b"POST /healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body), body)
    for parts in ([request], [request[:-4], request[-4:]]):
        answer, _ = await _sent(daemon.port, *parts, guard=daemon.service.public_guard)
        assert answer.startswith(b"HTTP/1.1 413 "), answer
