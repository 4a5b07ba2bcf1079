"""A refused WebSocket handshake is answered with a fixed text naming what was wrong, never with the request's bytes
(wsgw.web.refusals): Autobahn's ``failHandshake`` reasons quote the bad key, Origin, Upgrade, Connection, Host
port, subprotocol or extension parameter, and were sent back in the status line (reflected content).

On the real daemon on loopback, a request read at once (handed to Autobahn directly) and one read in two parts
(through twisted.web): each answer is a standard status line, a plain-text body from ``REFUSALS``, and holds no
byte of the marker the request carried; neither does any line logged meanwhile.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import pytest
import pytest_twisted
from autobahn.websocket.protocol import WebSocketServerProtocol
from hypothesis import given
from hypothesis import strategies as st
from twisted.logger import formatEventAsClassicLogText, globalLogPublisher

from tests.support.daemon import StartGateway
from tests.support.rawtcp import UPGRADE, raw_connect
from tests.support.waiting import wait_until
from wsgw.web.refusals import REFUSALS, handshake_refusal, refusal_text

MARK = b"<img src=x onerror=1>"
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
ALLOWED = "https://cells.example.org"

# (what is wrong, the request, the status, the text answered); each request carries MARK where Autobahn quoted it
CASES = [
    ("key length", UPGRADE.replace(KEY, MARK), 400, dict(REFUSALS)["bad Sec-WebSocket-Key"]),
    ("key character", UPGRADE.replace(KEY, b"<img src=x onerror=1>a=="[-24:]), 400,
     dict(REFUSALS)["bad character "]),
    ("no key", UPGRADE.replace(b"Sec-WebSocket-Key: " + KEY + b"\r\n", b"X-Mark: " + MARK + b"\r\n"), 400,
     "the Sec-WebSocket-Key header is missing (RFC 6455 section 4.1)"),
    ("connection", UPGRADE.replace(b"Connection: Upgrade", b"Connection: " + MARK), 400,
     "the Connection header does not name Upgrade (RFC 6455 section 4.1)"),
    ("no connection", UPGRADE.replace(b"Connection: Upgrade\r\n", b"X-Mark: " + MARK + b"\r\n"), 400,
     "the Connection header is missing (RFC 6455 section 4.1)"),
    ("origin syntax", UPGRADE.replace(b"\r\n\r\n", b"\r\nOrigin: " + MARK + b"\r\n\r\n"), 400,
     "the Origin header is not an origin (RFC 6454)"),
    ("origin refused", UPGRADE.replace(b"\r\n\r\n", b"\r\nOrigin: https://" + MARK.replace(b" ", b"") + b"\r\n\r\n"),
     403, "origin not allowed"),
    ("subprotocol twice", UPGRADE.replace(b"\r\n\r\n", b"\r\nSec-WebSocket-Protocol: " + MARK + b", " + MARK
                                          + b"\r\n\r\n"), 400,
     "the Sec-WebSocket-Protocol header names a subprotocol twice (RFC 6455 section 4.1)"),
    ("host port", UPGRADE.replace(b"Host: 127.0.0.1", b"Host: h:" + MARK.replace(b" ", b"")), 400,
     "the port in the Host header is not a number"),
    ("no host", UPGRADE.replace(b"Host: 127.0.0.1\r\n", b"X-Mark: " + MARK + b"\r\n"), 400,
     "the Host header is missing (RFC 6455 section 4.1)"),
    ("extension", UPGRADE.replace(b"\r\n\r\n", b"\r\nSec-WebSocket-Extensions: permessage-deflate; "
                                  + MARK.replace(b" ", b"").replace(b"=", b"") + b"\r\n\r\n"), 400,
     "the Sec-WebSocket-Extensions offer is not valid (RFC 7692)"),
]
_MARKS = [MARK, MARK.replace(b" ", b""), MARK.replace(b" ", b"").replace(b"=", b""), b"<img", b"onerror"]


async def _answer(port: int, request: bytes, parts: int, guard: Any) -> bytes:
    raw: Any = await raw_connect(port)
    if parts == 2:
        raw.send(request[:20])
        await wait_until(lambda: any(t.received for t in guard._tickets.values()), "the first part read")
        raw.send(request[20:])
    else:
        raw.send(request)
    return await raw.wait_lost()  # type: ignore[no-any-return]


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("parts", [1, 2], ids=["one read", "two reads"])
async def test_a_refused_handshake_names_what_was_wrong_and_echoes_nothing(gateway: StartGateway, parts: int) -> None:
    events: list[Any] = []
    globalLogPublisher.addObserver(events.append)
    try:
        daemon = await gateway(redis=None, overrides={"websocket.allowed_origins": ALLOWED})
        for what, request, code, text in CASES:
            assert any(mark in request for mark in _MARKS), what
            answer = await _answer(daemon.port, request, parts, daemon.service.public_guard)
            head, _, body = answer.partition(b"\r\n\r\n")
            status, *fields = head.split(b"\r\n")
            assert status == b"HTTP/1.1 %d %s" % (code, b"Forbidden" if code == 403 else b"Bad Request"), (what, answer)
            assert b"content-length: %d" % len(body) in [f.lower() for f in fields], (what, answer)
            assert body == text.encode() + b"\n", (what, answer)
            assert not any(mark in answer for mark in _MARKS), (what, answer)
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [formatEventAsClassicLogText(e) or "" for e in events]
    assert any("failing WebSocket opening handshake" in line for line in lines)
    assert not [line for line in lines if any(mark.decode() in line for mark in _MARKS)]


def _literal_reasons() -> list[str]:
    """The literal start of every reason Autobahn's server protocol gives ``failHandshake`` (up to its first
    interpolation); a reason that is a variable (``str(e)``, ``err.value.reason``) is left out."""
    source = inspect.getsource(WebSocketServerProtocol)
    starts = re.findall(r"failHandshake\(\s*f?([\"'])(.*?)(?:\{|\1)", source)
    return [start for _, start in starts]


def test_every_reason_autobahn_gives_has_a_text_of_its_own() -> None:
    """Pinned against Autobahn: each of its failHandshake reasons maps to its own entry of REFUSALS, not to the
    generic text (an Autobahn upgrade adding one fails here; the generic text is still safe)."""
    reasons = _literal_reasons()
    assert len(reasons) >= 28, reasons
    generic = refusal_text("", 400)
    for reason in reasons:
        assert refusal_text(reason or "x", 400) != generic, reason


@given(st.text(), st.sampled_from([400, 403, 404, 405, 426, 500, 503, 505, 599]),
       st.lists(st.tuples(st.text(max_size=20), st.text(max_size=20)), max_size=2))
def test_no_byte_of_the_reason_reaches_the_answer(reason: str, code: int, headers: list[tuple[str, str]]) -> None:
    text, answer = handshake_refusal(reason, code, headers)
    fixed = {t for _, t in REFUSALS} | {refusal_text("", c) for c in (400, 403, 404, 405, 426, 500, 503, 505, 599)}
    assert text in fixed
    head, _, body = answer.partition(b"\r\n\r\n")
    assert body == text.encode() + b"\n"
    assert head.isascii() and b"\r\n\r\n" not in head and all(
        line and line.decode().isprintable() for line in head.split(b"\r\n"))


def test_autobahns_supported_versions_header_is_kept() -> None:
    _, answer = handshake_refusal("WebSocket version 8 not supported (supported versions: 13)", 400,
                                  [("Sec-WebSocket-Version", "13")])
    assert b"\r\nSec-WebSocket-Version: 13\r\n" in answer
    assert answer.endswith(b"\r\n\r\nWebSocket version 13 only (RFC 6455 section 4.2.2)\n")


@pytest_twisted.ensureDeferred
async def test_a_method_a_resource_does_not_take_is_answered_without_quoting_the_request(
        gateway: StartGateway) -> None:
    """twisted.web's own 405 and 501 pages quoted the request target and method (``Your browser approached me
    (at /healthz?<...>) with the method "POST"``): the same kind of reflection. Both listeners now answer a fixed
    text naming the resource's methods (wsgw.web.answers), 405 with Allow for GET/HEAD/POST, 501 for others."""
    daemon = await gateway(redis=None, admin="tcp:0:interface=127.0.0.1")
    target = b"?q=%3Cimg%20src=x%3E<img>"
    for port, path, method, status, allow in [
            (daemon.port, b"/healthz", b"POST", b"405 Method Not Allowed", b"GET, HEAD"),
            (daemon.port, b"/healthz", b"PROPFIND", b"501 Not Implemented", None),
            (daemon.admin_port, b"/metrics", b"POST", b"405 Method Not Allowed", b"GET, HEAD"),
            (daemon.admin_port, b"/metrics", b"MARKER-METHOD", b"501 Not Implemented", None)]:
        raw: Any = await raw_connect(port)
        raw.send(method + b" " + path + target + b" HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        answer = await raw.wait_lost()
        head, _, body = answer.partition(b"\r\n\r\n")
        status_line, *fields = head.split(b"\r\n")
        assert status_line == b"HTTP/1.1 " + status, answer
        names = {f.split(b":")[0].lower(): f.split(b":", 1)[1].strip() for f in fields}
        assert names.get(b"allow") == allow and names[b"content-type"].startswith(b"text/plain"), answer
        assert b"img" not in answer and b"MARKER" not in answer and path not in answer, answer
        assert body.endswith(b"\n") and b"allowed" in body, answer
