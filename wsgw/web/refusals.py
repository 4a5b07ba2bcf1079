"""The answer to a refused WebSocket opening handshake: a fixed text per kind of refusal, never the request's bytes.

Autobahn's ``failHandshake(reason, code, headers)`` answers ``HTTP/1.1 <code> <reason>`` where ``reason`` often
quotes the request (a bad ``Sec-WebSocket-Key``, ``Origin``, ``Upgrade`` or ``Connection`` value, the request
line, the Host port, a subprotocol, an extension parameter): content an attacker chooses, reflected into the
response, its status line at that. ``handshake_refusal`` turns each of those reasons into a fixed text naming what
was wrong (``REFUSALS``, matched on the start of Autobahn's message; anything else: the status code's own text),
answered as a plain-text body after a standard status line, as ``wsgw.web.site`` answers the refusals it makes
before Autobahn (RFC 6455 §4.2.2: a failed handshake gets an HTTP error status, then the connection closes).
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.web.http import RESPONSES

_V13 = "WebSocket version 13 only (RFC 6455 section 4.2.2)"
_KEY = "the Sec-WebSocket-Key header is not 16 bytes in base64 (RFC 6455 section 4.1)"
_EXTENSIONS = "the Sec-WebSocket-Extensions offer is not valid (RFC 7692)"

REFUSALS: tuple[tuple[str, str], ...] = (
    # (the start of Autobahn 26's failHandshake reason, wsgw's text), in Autobahn's order (processHandshake)
    ("Error during parsing of HTTP status line", "the request head could not be parsed"),
    ("Bad HTTP request status line", "the request line is not valid (RFC 9112 section 3)"),
    ("HTTP method ", "a WebSocket upgrade is a GET request (RFC 6455 section 4.1)"),
    ("Unsupported HTTP version", "a WebSocket upgrade needs HTTP/1.1 (RFC 6455 section 4.1)"),
    ("HTTP requested resource contains a fragment", "a WebSocket URI has no fragment (RFC 6455 section 3)"),
    ("Bad HTTP request resource", "the request target could not be parsed"),
    ("HTTP Host header missing", "the Host header is missing (RFC 6455 section 4.1)"),
    ("HTTP Host header appears more than once", "the Host header appears more than once"),
    ("invalid port", "the port in the Host header is not a number"),
    ("port ", "the port in the Host header is not this server's"),
    ("HTTP Upgrade header missing", "this is a WebSocket endpoint: send a WebSocket upgrade (RFC 6455)"),
    ("HTTP Upgrade headers do not include", "the Upgrade header does not name websocket (RFC 6455 section 4.1)"),
    ("HTTP Connection header missing", "the Connection header is missing (RFC 6455 section 4.1)"),
    ("HTTP Connection headers do not include", "the Connection header does not name Upgrade (RFC 6455 section 4.1)"),
    ("WebSocket connection denied - Hixie76", "the Sec-WebSocket-Version header is missing: " + _V13),
    ("HTTP Sec-WebSocket-Version header appears", "the Sec-WebSocket-Version header appears more than once"),
    ("could not parse HTTP Sec-WebSocket-Version", _V13),
    ("WebSocket version ", _V13),
    ("duplicate protocol", "the Sec-WebSocket-Protocol header names a subprotocol twice (RFC 6455 section 4.1)"),
    ("HTTP Origin header appears more than once", "the Origin header appears more than once"),
    ("HTTP Origin header invalid", "the Origin header is not an origin (RFC 6454)"),
    ("WebSocket connection denied: origin", "origin not allowed"),
    ("origin not allowed", "origin not allowed"),  # (wsgw's own ConnectionDeny, wsgw.web.protocols)
    ("HTTP Sec-WebSocket-Key header missing", "the Sec-WebSocket-Key header is missing (RFC 6455 section 4.1)"),
    ("HTTP Sec-WebSocket-Key header appears", "the Sec-WebSocket-Key header appears more than once"),
    ("bad Sec-WebSocket-Key", _KEY),
    ("bad character ", _KEY),
    ("HTTP Sec-WebSocket-Extensions header appears", "the Sec-WebSocket-Extensions header appears more than once"),
    ("maximum number of connections reached", "too many connections"),
    ("Internal server error", "internal server error"),
    # succeedHandshake: a permessage-deflate offer Autobahn could not parse (its message quotes the parameter)
    ("illegal extension parameter", _EXTENSIONS),
    ("multiple occurrence of extension parameter", _EXTENSIONS),
    ("invalid ", _EXTENSIONS),
)

_GENERIC = {400: "the WebSocket upgrade request is not valid (RFC 6455 section 4.2.1)"}
_PHRASES = {**RESPONSES, 426: b"Upgrade Required"}  # (twisted.web has no phrase for 426, RFC 9110 15.5.22)


def refusal_text(reason: str, code: int) -> str:
    """wsgw's fixed text for Autobahn's refusal ``reason`` with status ``code``: never a byte of ``reason``."""
    for start, text in REFUSALS:
        if reason.startswith(start):
            return text
    return _GENERIC.get(code) or _PHRASES.get(code, b"refused").decode("ascii").lower()


def handshake_refusal(reason: str, code: int, headers: Iterable[tuple[str, str]] | None = None) -> tuple[str, bytes]:
    """``(text, answer)``: ``refusal_text(reason, code)`` and the whole HTTP answer carrying it (``code`` with its
    standard phrase, the text as a ``text/plain`` body, ``Connection: close``), with ``headers`` (Autobahn's:
    ``Sec-WebSocket-Version``, the versions served) when they are printable ASCII."""
    text = refusal_text(reason, code)
    body = text.encode("ascii") + b"\n"
    phrase = _PHRASES.get(code, b"Error")
    extra = b"".join(f"{name}: {value}\r\n".encode("ascii") for name, value in headers or ()
                     if (name + value).isascii() and (name + value).isprintable())
    answer = (b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
              b"Connection: close\r\nCache-Control: no-store\r\n%s\r\n%s" % (code, phrase, len(body), extra, body))
    return text, answer
