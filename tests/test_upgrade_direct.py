"""A whole WebSocket upgrade in the socket's first read goes to Autobahn directly, not through twisted.web's
parse first (bench/RESULTS.md "Connect path", Part 2); everything else, and every refusal, stays twisted.web's."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.daemon import StartGateway, healthz, token, workspace
from tests.support.rawtcp import UPGRADE, exchange, head, raw_connect
from tests.support.waiting import wait_until
from tests.support.wsclient import connect
from wsgw.web.listener import BoundedRequest
from wsgw.web.upgrade import MAX_HEAD, whole_upgrade

HOME = workspace("w-home", "home", "ds/home")
CELLS = (b"GET /ws/event?x=1 HTTP/1.1\r\nHost: cells.example.org\r\nUser-Agent: Mozilla/5.0\r\n"
         b"Upgrade: websocket\r\nConnection: Upgrade\r\nOrigin: https://cells.example.org\r\n"
         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
         b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\nCookie: a=b\r\n\r\n")


def test_whole_upgrades_are_named_by_their_route() -> None:
    assert whole_upgrade(UPGRADE) == b"/ws"
    assert whole_upgrade(CELLS) == b"/ws/event"
    assert whole_upgrade(UPGRADE.replace(b"/ws ", b"/ws/ ")) == b"/ws"
    assert whole_upgrade(UPGRADE.replace(b"Upgrade: websocket", b"upgrade:WebSocket ")) == b"/ws"
    assert whole_upgrade(UPGRADE.replace(b"Upgrade: websocket", b"Upgrade: h2c, websocket")) == b"/ws"


@pytest.mark.parametrize("request_bytes", [
    UPGRADE[:-2],  # not whole
    UPGRADE + b"\x81\x00",  # bytes after the head
    UPGRADE.replace(b"HTTP/1.1\r\n", b"HTTP/1.0\r\n", 1),
    UPGRADE.replace(b"GET ", b"HEAD ", 1),
    UPGRADE.replace(b"GET /ws ", b"GET  /ws ", 1),
    UPGRADE.replace(b"GET /ws ", b"GET http://h/ws ", 1),
    UPGRADE.replace(b"Upgrade: websocket\r\n", b""),
    UPGRADE.replace(b"Upgrade: websocket", b"Upgrade: h2c"),
    UPGRADE.replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8"),
    UPGRADE.replace(b"Sec-WebSocket-Version: 13\r\n", b""),
    UPGRADE.replace(b"\r\n\r\n", b"\r\nSec-WebSocket-Version: 13\r\n\r\n"),  # twice
    UPGRADE.replace(b"\r\n\r\n", b"\r\nHost: other\r\n\r\n"),  # any header twice
    UPGRADE.replace(b"\r\n\r\n", b"\r\nContent-Length: 0\r\n\r\n"),
    UPGRADE.replace(b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n"),
    UPGRADE.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n"),  # twisted.web answers 100 first
    UPGRADE.replace(b"Host: ", b"Host : "),  # twisted.web answers 400
    UPGRADE.replace(b"Host: 127.0.0.1\r\n", b"Host: 127.0.0.1\r\n folded\r\n"),
    UPGRADE.replace(b"\r\n\r\n", b"\r\nX-Name: caf\xc3\xa9\r\n\r\n"),  # not ASCII
    UPGRADE.replace(b"\r\n\r\n", b"\r\nX-Name: a\x0bb\r\n\r\n"),  # a control character
    UPGRADE.replace(b"\r\n\r\n", b"\r\nX-Pad: " + b"p" * MAX_HEAD + b"\r\n\r\n"),
    UPGRADE.replace(b"\r\n\r\n", b"".join(b"\r\nX-%d: 1" % i for i in range(100)) + b"\r\n\r\n"),
])
def test_anything_else_goes_to_twisted_web(request_bytes: bytes) -> None:
    assert whole_upgrade(request_bytes) is None


def _count_requests(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    processed: list[bytes] = []
    real = BoundedRequest.process
    monkeypatch.setattr(BoundedRequest, "process", lambda self: (processed.append(self.path), real(self))[1])
    return processed


@pytest_twisted.ensureDeferred
async def test_a_whole_upgrade_builds_no_twisted_web_request(gateway: StartGateway,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A client's upgrade (one write) opens and subscribes without a twisted.web Request; an upgrade trickled
    over two reads, /healthz and an unknown path on the same port are still twisted.web's."""
    processed = _count_requests(monkeypatch)
    daemon = await gateway()
    client = await connect(daemon.port, "/ws/event")
    assert (await client.subscribe(token("u1", [HOME])))["@type"] == "subscribed"
    assert processed == []
    assert daemon.service.public_guard.open == 1
    raw: Any = await raw_connect(daemon.port)
    raw.send(UPGRADE[:20])
    guard = daemon.service.public_guard
    await wait_until(lambda: any(t.received for t in guard._tickets.values()), "the first part read")
    raw.send(UPGRADE[20:])
    await wait_until(lambda: b"\r\n\r\n" in raw.received, "the answer to the trickled upgrade")
    assert raw.received.startswith(b"HTTP/1.1 101") and processed == [b"/ws"]
    raw.close()
    assert await healthz(daemon.port) == 200
    status, _ = head(await exchange(daemon.port, b"GET /nowhere HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"))
    assert status.startswith(b"HTTP/1.1 404") and processed[1:] == [b"/healthz", b"/nowhere"]
    client.sendClose()
    await client.wait_closed()
    await wait_until(lambda: daemon.service.public_guard.open == 0, "every socket released")


@pytest_twisted.ensureDeferred
async def test_a_whole_upgrade_keeps_the_origin_list(gateway: StartGateway,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Taken directly (no twisted.web Request), a refused origin is still 403 and counted."""
    processed = _count_requests(monkeypatch)
    daemon = await gateway(redis=None, extra="[websocket]\nallowed_origins = https://cells.example.org\n")
    status, _ = head(await exchange(daemon.port, CELLS.replace(b"https://cells.", b"https://evil.")))
    assert status.startswith(b"HTTP/1.1 403"), status
    assert daemon.service.public_guard.refused["origin"] == 1
    raw: Any = await raw_connect(daemon.port)
    raw.send(CELLS)
    await wait_until(lambda: b"\r\n\r\n" in raw.received, "the answer to the upgrade")
    assert raw.received.startswith(b"HTTP/1.1 101"), raw.received
    raw.close()
    assert processed == []


async def _answer(port: int, parts: list[bytes], guard: Any) -> bytes:
    """What the server sends for ``parts``, each part read on its own, up to the end of a 101 answer."""
    raw: Any = await raw_connect(port)
    for part in parts[:-1]:
        raw.send(part)
        await wait_until(lambda: any(t.received for t in guard._tickets.values()), "the part read")
    raw.send(parts[-1])
    await wait_until(lambda: b"HTTP/1.1 101" in raw.received and raw.received.endswith(b"\r\n\r\n"), "the 101")
    raw.close()
    return raw.received  # type: ignore[no-any-return]


@pytest_twisted.ensureDeferred
async def test_an_upgrade_expecting_100_continue_gets_one_answer_however_it_is_read(gateway: StartGateway) -> None:
    """``Expect: 100-continue`` on an upgrade: twisted.web answers ``100 Continue`` before the 101; the same
    request read at once got the 101 alone, so what a client saw depended on how its bytes were segmented."""
    daemon = await gateway(redis=None)
    guard = daemon.service.public_guard
    request = UPGRADE.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n")
    whole = await _answer(daemon.port, [request], guard)
    await wait_until(lambda: guard.open == 0, "the first socket released")
    split = await _answer(daemon.port, [request[:20], request[20:]], guard)
    assert whole.split(b"\r\n")[0] == split.split(b"\r\n")[0], (whole, split)


_OLD_FIELD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([ -~\t]*?)[ \t]*")


def _whole_upgrade_before(data: bytes) -> bytes | None:
    """``whole_upgrade`` as it was with a lazy value group (bench/RESULTS.md "Connect path", part 3)."""
    if len(data) > MAX_HEAD or not data.endswith(b"\r\n\r\n") or data.find(b"\r\n\r\n") != len(data) - 4:
        return None
    lines = data[:-4].split(b"\r\n")
    if len(lines) > 65:
        return None
    method, sp, rest = lines[0].partition(b" ")
    target, sp2, version = rest.partition(b" ")
    if method != b"GET" or version != b"HTTP/1.1" or not sp or not sp2 or re.fullmatch(rb"/[!-~]*", target) is None:
        return None
    seen: set[bytes] = set()
    upgrade = websocket_version = None
    for line in lines[1:]:
        field = _OLD_FIELD.fullmatch(line)
        if field is None:
            return None
        name = field.group(1).lower()
        if name in seen or name in (b"content-length", b"transfer-encoding", b"expect"):
            return None
        seen.add(name)
        if name == b"upgrade":
            upgrade = field.group(2)
        elif name == b"sec-websocket-version":
            websocket_version = field.group(2)
    if upgrade is None or b"websocket" not in (token.strip().lower() for token in upgrade.split(b",")):
        return None
    if websocket_version != b"13":
        return None
    return target.partition(b"?")[0].rstrip(b"/") or b"/"


_PIECES = [b"13", b"websocket", b"WebSocket", b"h2c", b",", b" ", b"\t", b"1", b"3", b"x", b"\x0b", b"\xc3\xa9", b"\r",
           b"\n", b""]
_VALUES = (st.sampled_from([b"13 ", b"13\t", b"13 \t", b" 13", b"websocket ", b"h2c, websocket\t", b"13 3"])
           | st.lists(st.sampled_from(_PIECES), max_size=6).map(b"".join))
_NAMES = st.sampled_from([b"Upgrade", b"upgrade", b"Sec-WebSocket-Version", b"Host", b"Connection", b"Expect",
                          b"X-A", b"Bad Name", b""])


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(_NAMES, st.sampled_from([b":", b": ", b":\t", b" :"]), _VALUES), max_size=6),
       st.sampled_from([b"/ws", b"/ws/", b"/chat?x=1", b"/", b"ws"]))
def test_whole_upgrade_answers_as_before_its_value_pattern_was_made_greedy(
        fields: list[tuple[bytes, bytes, bytes]], target: bytes) -> None:
    upgrade, version = (b"Upgrade", b": ", b"websocket"), (b"Sec-WebSocket-Version", b": ", b"13")
    for extra in (fields, [upgrade, *fields], [version, *fields], [*fields, upgrade, version]):
        data = b"GET " + target + b" HTTP/1.1\r\n" + b"".join(n + s + v + b"\r\n" for n, s, v in extra) + b"\r\n"
        assert whole_upgrade(data) == _whole_upgrade_before(data), data


def test_trailing_whitespace_of_the_upgrade_and_version_values_is_not_theirs() -> None:
    assert whole_upgrade(UPGRADE.replace(b"Upgrade: websocket", b"Upgrade: websocket \t")) == b"/ws"
    assert whole_upgrade(UPGRADE.replace(b"Version: 13", b"Version: 13 \t ")) == b"/ws"
    assert whole_upgrade(UPGRADE.replace(b"Version: 13", b"Version: 13 3")) is None


def test_a_head_of_blanks_before_a_byte_out_of_place_is_refused_in_linear_time() -> None:
    """A header value of ~16 KiB of blanks, then a byte no value may hold, in one read: the value pattern
    must not try every split of the blanks between its leading whitespace and the value (quadratic: ~2 s of the
    reactor per such request on this machine, every socket of the daemon waiting; the lazy group before was worse).
    Linear, it takes well under a millisecond; the bound leaves a thousandfold margin for a loaded machine."""
    for tail in (b"\x80", b"\x7f", b"\x00"):
        data = UPGRADE[:-2] + b"X-A:"
        data += b" " * (MAX_HEAD - len(data) - len(tail) - 4) + tail + b"\r\n\r\n"
        assert len(data) == MAX_HEAD
        started = time.perf_counter()
        assert whole_upgrade(data) is None
        assert time.perf_counter() - started < 0.2


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=6) | _NAMES, st.binary(max_size=8) | _VALUES), max_size=5))
def test_whole_upgrade_answers_as_before_its_lines_were_checked_without_a_pattern(
        fields: list[tuple[bytes, bytes]]) -> None:
    """Any bytes in a header line's name and value (colons, controls, non-ASCII, blanks around the colon): the
    same answer as the pattern per line gave (bench/RESULTS.md "Connect path", part 4)."""
    upgrade, version = (b"Upgrade", b"websocket"), (b"Sec-WebSocket-Version", b"13")
    for extra in (fields, [upgrade, version, *fields], [*fields, upgrade, version]):
        data = b"GET /ws HTTP/1.1\r\n" + b"".join(n + b":" + v + b"\r\n" for n, v in extra) + b"\r\n"
        assert whole_upgrade(data) == _whole_upgrade_before(data), data
