"""A client's first frames sent in the same TCP write as its upgrade request are the socket's first WebSocket
bytes (wsgw.web.site._Upgrade): RFC 6455 §4.1 says a client MUST wait for the 101, but a server must not drop
bytes it received. They used to stay in twisted.web's line buffer, unread: the subscribe was never answered.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import pytest_twisted

from tests.support.daemon import StartGateway, token, workspace
from tests.support.rawtcp import UPGRADE, raw_connect
from tests.support.waiting import wait_until

HOME = workspace("w-home", "home", "ds/home")


def masked(payload: bytes, opcode: int = 0x1) -> bytes:
    """One final client frame (masked, RFC 6455 §5.3)."""
    mask = os.urandom(4)
    n = len(payload)
    length = bytes([0x80 | n]) if n < 126 else b"\xfe" + n.to_bytes(2, "big")
    return bytes([0x80 | opcode]) + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each whole unmasked frame in ``data`` (a server's frames)."""
    frames, i = [], 0
    while i + 2 <= len(data):
        size, start = data[i + 1] & 0x7F, i + 2
        if size == 126:
            size, start = int.from_bytes(data[i + 2:i + 4], "big"), i + 4
        elif size == 127:
            size, start = int.from_bytes(data[i + 2:i + 10], "big"), i + 10
        if start + size > len(data):
            break
        frames.append((data[i] & 0x0F, data[start:start + size]))
        i = start + size
    return frames


def _after_101(raw: Any) -> list[tuple[int, bytes]]:
    head, sep, rest = raw.received.partition(b"\r\n\r\n")
    return server_frames(rest) if sep and head.startswith(b"HTTP/1.1 101 ") else []


def _texts(raw: Any) -> list[Any]:
    return [json.loads(payload) for opcode, payload in _after_101(raw) if opcode == 0x1]


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("split", [None, 20, -3], ids=["one write", "head in two reads", "last read: head's end"])
async def test_a_subscribe_sent_with_the_upgrade_is_answered(gateway: StartGateway, split: int | None) -> None:
    daemon = await gateway(redis=None)
    subscribe = masked(json.dumps({"@type": "subscribe", "jwt": token("u1", [HOME])}).encode())
    ping = masked(b"are you there", opcode=0x9)
    data = UPGRADE + subscribe + ping
    raw: Any = await raw_connect(daemon.port)
    guard = daemon.service.public_guard
    if split is None:
        raw.send(data)
    else:
        cut = split if split > 0 else len(UPGRADE) + split
        raw.send(data[:cut])
        await wait_until(lambda: any(t.received for t in guard._tickets.values()), "the first part read")
        raw.send(data[cut:])
    await wait_until(lambda: any(m.get("@type") == "subscribed" for m in _texts(raw)), "the subscribe answered")
    assert [m["@type"] for m in _texts(raw)] == ["subscribed"] and _texts(raw)[0]["user"] == "u1"
    await wait_until(lambda: (0xA, b"are you there") in _after_101(raw), "the ping after it answered")
    assert daemon.service.public_guard.refused["handshake_timeout"] == 0
    raw.close()


@pytest_twisted.ensureDeferred
async def test_bytes_after_a_refused_upgrade_are_not_acted_on(gateway: StartGateway) -> None:
    """An upgrade twisted.web refuses (HTTP/1.0: 400) is answered and closed; the frame behind it is not read."""
    daemon = await gateway(redis=None)
    subscribe = masked(json.dumps({"@type": "subscribe", "jwt": token("u1", [HOME])}).encode())
    raw: Any = await raw_connect(daemon.port)
    raw.send(UPGRADE.replace(b"HTTP/1.1\r\n", b"HTTP/1.0\r\n", 1) + subscribe)
    answer = await raw.wait_lost()
    assert answer.startswith(b"HTTP/1.0 400 ") and b"subscribed" not in answer
