"""The listeners at the connection level, on the real daemon: what RFC 6455 requires of an upgrade, what no
answer says (software versions), and every bound a peer meets before it has a WebSocket (PROTOCOL.md §1)."""

from __future__ import annotations

import platform

import autobahn
import pytest
import pytest_twisted
import twisted

from tests.support.daemon import StartGateway, token
from tests.support.rawtcp import UPGRADE, exchange, head, raw_connect
from tests.support.waiting import wait_until
from tests.support.wsclient import connect

ADMIN = "tcp:0:interface=127.0.0.1"
VERSIONS = (twisted.__version__.encode(), autobahn.__version__.encode(), platform.python_version().encode(),
            b"TwistedWeb", b"Autobahn", b"Twisted")


def says_no_version(answer: bytes) -> bool:
    """No Server header, and no software name or version anywhere in the answer (headers and body)."""
    return b"server" not in head(answer)[1] and not any(v.lower() in answer.lower() for v in VERSIONS)


# --------------------------------------------------------------------------- RFC 6455 strictness


@pytest_twisted.ensureDeferred
async def test_an_upgrade_over_http_1_0_is_refused_400(gateway: StartGateway) -> None:
    """RFC 6455 §4.1 needs HTTP/1.1: an otherwise valid upgrade over HTTP/1.0 gets 400 and no socket opens."""
    daemon = await gateway(redis=None)
    answer = await exchange(daemon.port, UPGRADE.replace(b"HTTP/1.1", b"HTTP/1.0"))
    status, _ = head(answer)
    assert status.startswith(b"HTTP/1.0 400") or status.startswith(b"HTTP/1.1 400"), answer
    assert b"HTTP/1.1" in answer.split(b"\r\n\r\n", 1)[1]  # the body says what is needed
    assert not daemon.service.gateway.table
    assert says_no_version(answer)


@pytest.mark.parametrize("version", [b"8", b"7", b"14"])
@pytest_twisted.ensureDeferred
async def test_an_upgrade_with_another_websocket_version_is_refused_426(gateway: StartGateway,
                                                                       version: bytes) -> None:
    """RFC 6455 §4.2.2: a version other than 13 gets 426 Upgrade Required naming the one spoken,
    ``Sec-WebSocket-Version: 13``; no socket opens."""
    daemon = await gateway(redis=None)
    request = UPGRADE.replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: " + version)
    answer = await exchange(daemon.port, request.replace(b"Connection: Upgrade", b"Connection: Upgrade, close"))
    status, headers = head(answer)
    assert status.startswith(b"HTTP/1.1 426"), answer
    assert headers[b"sec-websocket-version"] == b"13"
    assert not daemon.service.gateway.table
    assert says_no_version(answer)


@pytest.mark.parametrize("path", ["/ws", "/ws/event", "/chat", "/ws/chat"])
@pytest_twisted.ensureDeferred
async def test_a_plain_get_of_a_websocket_path_is_a_plain_426(gateway: StartGateway, path: str) -> None:
    """``GET /ws`` without an upgrade gets 426 Upgrade Required with ``Upgrade: websocket`` (RFC 9110 §15.5.22),
    not Autobahn's version page."""
    daemon = await gateway(redis=None)
    answer = await exchange(daemon.port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    status, headers = head(answer)
    assert status.startswith(b"HTTP/1.1 426"), answer
    assert headers[b"upgrade"].lower() == b"websocket"
    assert headers[b"content-type"].startswith(b"text/plain")
    assert says_no_version(answer)


@pytest_twisted.ensureDeferred
async def test_no_answer_names_a_server_version(gateway: StartGateway) -> None:
    """The 101 of a successful upgrade, /healthz, the live page, a 404, a 405, the operator listener's
    /metrics and /publish: none has a Server header or names Twisted, Autobahn or their versions."""
    daemon = await gateway(redis=None, admin=ADMIN, overrides={"web.live_page": "yes"})
    raw = await raw_connect(daemon.port)
    raw.send(UPGRADE)
    await wait_until(lambda: b"\r\n\r\n" in raw.received, "the 101 answer")
    assert raw.received.startswith(b"HTTP/1.1 101")
    assert says_no_version(raw.received)
    raw.close()
    close = b"Connection: close\r\n\r\n"
    public = [b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"GET / HTTP/1.1\r\nHost: x\r\n",
              b"GET /nowhere HTTP/1.1\r\nHost: x\r\n", b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n",
              b"GET /healthz HTTP/1.0\r\n"]
    for request in public:
        answer = await exchange(daemon.port, request + close)
        assert answer.startswith(b"HTTP/1."), (request, answer)
        assert says_no_version(answer), (request, answer)
    operator = [b"GET /metrics HTTP/1.1\r\nHost: x\r\n", b"POST /publish/tree HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: 2\r\n" + close + b"{}", b"GET /nowhere HTTP/1.1\r\nHost: x\r\n" + close]
    for request in operator:
        answer = await exchange(daemon.admin_port, request if request.endswith(b"{}") or request.endswith(close)
                                else request + close)
        assert answer.startswith(b"HTTP/1.1"), (request, answer)
        assert says_no_version(answer), (request, answer)


@pytest_twisted.ensureDeferred
async def test_a_valid_upgrade_still_opens_and_serves(gateway: StartGateway) -> None:
    """The checks refuse only what RFC 6455 refuses: a real client (HTTP/1.1, version 13) subscribes."""
    daemon = await gateway(redis=None)
    client = await connect(daemon.port, "/chat")
    assert (await client.subscribe(token("alice")))["@type"] == "subscribed"
