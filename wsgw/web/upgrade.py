"""Which first reads of a socket are a whole WebSocket upgrade that twisted.web would hand to Autobahn as is.

twisted.web parses a request into a ``Request`` (``HTTPChannel``,
``Headers``...) and Autobahn's ``WebSocketResource`` then re-serializes it for
Autobahn to parse again: a tenth of a connect storm's CPU (bench/RESULTS.md,
"Connect path", Part 2). The public listener (``wsgw.web.listener``) gives
Autobahn the socket's first read directly when ``whole_upgrade`` names its
route, and twisted.web everything else (other paths, refusals, requests split
over reads, anything unusual), so every answer twisted.web and
``wsgw.web.site`` give stays theirs.

``whole_upgrade`` accepts only a read that is exactly one request head
(RFC 9112 §2.1: request line, header lines, empty line; no byte after it),
``GET <origin-form> HTTP/1.1`` (RFC 9112 §3.2.1) of at most ``MAX_HEAD``
bytes (twisted.web's ``HTTPChannel.totalHeadersSize``), header names that are
tokens (RFC 9110 §5.1), each at most once, printable ASCII only (no
obs-fold, nothing Autobahn's ``splitlines`` would split differently), with
``Upgrade`` naming ``websocket`` and one ``Sec-WebSocket-Version: 13`` (what
``wsgw.web.site`` checks before Autobahn, RFC 6455 §4.1/§4.2.2), and no body
(no ``Content-Length``, no ``Transfer-Encoding``: the public routes take none), and no ``Expect`` (twisted.web
answers ``Expect: 100-continue`` with ``100 Continue`` before the 101, RFC 9110 §10.1.1: the same answer whatever
the reads).
"""

from __future__ import annotations

import re

MAX_HEAD = 16384
"""Bytes of a request head twisted.web accepts (``HTTPChannel.totalHeadersSize``); a longer one goes to it."""

MAX_FIELDS = 64
"""Header lines of a request taken directly (twisted.web takes up to 500; more go to it)."""

# A header line is ``name:value``: the name a token (RFC 9110 §5.6.2), the value printable ASCII or tabs, its
# leading blanks not its own (its trailing ones are). Checked by deleting the allowed bytes (``bytes.translate``: a
# table lookup per byte in C) rather than a regular expression per line (the matcher's work per byte: a
# 250-byte upgrade took 20 us in process, now 14; bench/RESULTS.md "Connect path", part 4). Linear either way.
_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_VALUE_BYTE = bytes(range(0x20, 0x7F)) + b"\t"
_REFUSED = frozenset((b"content-length", b"transfer-encoding", b"expect"))
_TARGET = re.compile(rb"/[!-~]*")


def whole_upgrade(data: bytes) -> bytes | None:
    """The route (the request target's path without its trailing ``/``, as ``wsgw.web.site.Router`` looks it up)
    if ``data`` is one whole WebSocket upgrade request as the module docstring says, else None."""
    if len(data) > MAX_HEAD or not data.endswith(b"\r\n\r\n") or data.find(b"\r\n\r\n") != len(data) - 4:
        return None
    lines = data[:-4].split(b"\r\n")
    if len(lines) > MAX_FIELDS + 1:
        return None
    method, sp, rest = lines[0].partition(b" ")
    target, sp2, version = rest.partition(b" ")
    if method != b"GET" or version != b"HTTP/1.1" or not sp or not sp2 or _TARGET.fullmatch(target) is None:
        return None
    seen: set[bytes] = set()
    upgrade = websocket_version = None
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name.translate(None, _TCHAR) or value.translate(None, _VALUE_BYTE):
            return None
        name = name.lower()
        if name in seen or name in _REFUSED:
            return None
        seen.add(name)
        if name == b"upgrade":
            upgrade = value.lstrip(b" \t")
        elif name == b"sec-websocket-version":
            websocket_version = value.lstrip(b" \t")
    if upgrade is None or b"websocket" not in [token.strip().lower() for token in upgrade.split(b",")]:
        return None
    if websocket_version is None or websocket_version.rstrip(b" \t") != b"13":
        return None
    return target.partition(b"?")[0].rstrip(b"/") or b"/"
