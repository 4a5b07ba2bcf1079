"""Baseline: the floor of the connect path on Twisted, what any gateway on this stack pays per connect + subscribe.

A bare ``twisted.internet.protocol.Protocol`` that does only what the storm's client needs (bench/RESULTS.md
"Connect path", part 3): reads the upgrade, answers ``101`` with its ``Sec-WebSocket-Accept`` (RFC 6455 §4.2.2),
reads one masked text frame, verifies its HS256 token with PyJWT (``jwt.decode``, the secret from
``WSGW_HMAC_SECRET``; ``--no-jwt``: not at all; ``--wsgw-jwt``: through a ``jwt.PyJWT`` given wsgw's two
savings, ``wsgw.internals.pyjwt``) and answers ``subscribed`` in one text frame. No header checks,
no Origin, no limits, no timers, no session, no Redis: not a server, a measuring stick (Twisted's accept, reads,
writes and reactor, plus PyJWT).

    WSGW_HMAC_SECRET=... python bench/baselines/twisted_floor.py --port 8001 [--no-jwt | --wsgw-jwt]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import resource

import jwt
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

SECRET = os.environ.get("WSGW_HMAC_SECRET", "")
MAGIC = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
KEY = re.compile(rb"\r\nSec-WebSocket-Key:[ \t]*([A-Za-z0-9+/=]+)", re.IGNORECASE)


def text_frame(payload: bytes) -> bytes:
    n = len(payload)
    head = bytes([0x81, n]) if n < 126 else bytes([0x81, 126]) + n.to_bytes(2, "big")
    return head + payload


class Floor(Protocol):
    verify = True
    decoder = jwt.PyJWT()
    secret: bytes | str = SECRET

    def __init__(self) -> None:
        self.opened = False
        self.buf = b""

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        if not self.opened:
            if b"\r\n\r\n" not in self.buf:
                return
            key = KEY.search(self.buf)
            if key is None:
                self.transport.abortConnection()  # type: ignore[attr-defined]
                return
            accept = base64.b64encode(hashlib.sha1(key.group(1) + MAGIC).digest())
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"  # type: ignore[union-attr]
                                 b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            self.opened, self.buf = True, b""
            return
        b = self.buf
        if len(b) < 2:
            return
        n, i = b[1] & 0x7F, 2
        if n == 126:
            n, i = int.from_bytes(b[2:4], "big"), 4
        elif n == 127:
            n, i = int.from_bytes(b[2:10], "big"), 10
        if len(b) < i + 4 + n:
            return
        mask, payload, self.buf = b[i:i + 4], b[i + 4:i + 4 + n], b[i + 4 + n:]
        payload = (int.from_bytes(payload, "little") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "little")).to_bytes(
            n, "little")
        token = json.loads(payload)["jwt"]
        claims = self.decoder.decode(token, self.secret, algorithms=["HS256"]) if self.verify else {}
        self.transport.write(text_frame(json.dumps(  # type: ignore[union-attr]
            {"@type": "subscribed", "user": claims.get("name"), "exp": claims.get("exp")},
            separators=(",", ":")).encode()))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--no-jwt", action="store_true")
    p.add_argument("--wsgw-jwt", action="store_true")
    args = p.parse_args()
    if not SECRET:
        p.error("WSGW_HMAC_SECRET is not set")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    Floor.verify = not args.no_jwt
    if args.wsgw_jwt:
        from wsgw.internals.pyjwt import decode_segments_fast, prepare_keys_once

        prepare_keys_once(Floor.decoder)
        decode_segments_fast(Floor.decoder)
        Floor.secret = SECRET.encode()  # (one bytes object: prepared once, as wsgw's verifier holds it)
    reactor.listenTCP(args.port, Factory.forProtocol(Floor), backlog=4096, interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
