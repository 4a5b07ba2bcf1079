"""The listeners at the connection level, on the real daemon: what RFC 6455 requires of an upgrade, what no
answer says (software versions), and every bound a peer meets before it has a WebSocket (PROTOCOL.md §1)."""

from __future__ import annotations

import json
import platform
import socket

import autobahn
import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred

import twisted
from tests.support.daemon import StartGateway, healthz, scrape, token, value
from tests.support.rawtcp import UPGRADE, Raw, exchange, head, raw_connect
from tests.support.waiting import wait_until
from tests.support.wsclient import connect
from wsgw.web.listener import RESERVED_DESCRIPTORS, Ticket, public_cap

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
    ``Sec-WebSocket-Version: 13``, and the connection is closed (the client did not ask); no socket opens."""
    daemon = await gateway(redis=None)
    request = UPGRADE.replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: " + version)
    answer = await exchange(daemon.port, request, timeout=2)  # fails unless the server closes
    status, headers = head(answer)
    assert status == b"HTTP/1.1 426 Upgrade Required", answer
    assert headers[b"connection"] == b"close"
    assert headers[b"sec-websocket-version"] == b"13"
    assert not daemon.service.gateway.table
    assert says_no_version(answer)


@pytest.mark.parametrize("path", ["/ws", "/ws/event", "/chat", "/ws/chat"])
@pytest_twisted.ensureDeferred
async def test_a_plain_get_of_a_websocket_path_is_a_plain_426(gateway: StartGateway, path: str) -> None:
    """``GET /ws`` without an upgrade gets 426 Upgrade Required with ``Upgrade: websocket`` (RFC 9110 §15.5.22),
    not Autobahn's version page, and the connection is closed."""
    daemon = await gateway(redis=None)
    answer = await exchange(daemon.port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), timeout=2)
    status, headers = head(answer)
    assert status == b"HTTP/1.1 426 Upgrade Required", answer
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


# --------------------------------------------------------------------------- every socket counted from accept


async def trickle(raw: Raw, chunks: list[bytes], every: float = 0.25) -> None:
    """Send one of ``chunks`` every ``every`` seconds while the server keeps the socket open."""
    for chunk in chunks:
        if not raw.open:
            return
        raw.send(chunk)
        await task.deferLater(reactor, every, lambda: None)


HEADER_LINES = [b"X-Trickle-%d: %s\r\n" % (n, b"y" * 20) for n in range(24)]
TRICKLES = {
    "upgrade, a header line at a time": [b"GET /ws HTTP/1.1\r\n", *HEADER_LINES],
    "healthz, a header line at a time": [b"GET /healthz HTTP/1.1\r\n", *HEADER_LINES],
    "a request line, a byte at a time": [bytes([b]) for b in b"GET /healthz HTTP/1.1\r\nHost: x"],
    "nothing at all": [],
}


@pytest.mark.parametrize("kind", TRICKLES)
@pytest_twisted.ensureDeferred
async def test_a_trickled_request_is_cut_at_the_deadline_from_accept(gateway: StartGateway, kind: str) -> None:
    """A request whose headers never end (an upgrade or a plain GET, one header line or one byte every 0.25 s
    for 6 s), or a socket that sends nothing, gets 408 and is closed handshake_timeout (1 s) after accept:
    trickled bytes do not extend it."""
    daemon = await gateway(redis=None, admin=ADMIN, overrides={"server.handshake_timeout": "1"})
    started = reactor.seconds()
    raw = await raw_connect(daemon.port)
    trickling = Deferred.fromCoroutine(trickle(raw, TRICKLES[kind]))
    answer = await raw.wait_lost(4)
    await trickling
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert raw.lost_at is not None and 0.9 <= raw.lost_at - started <= 2.0  # 1 s, +1 s of slack for the reactor
    samples = await scrape(daemon)
    assert value(samples, "wsgw_connections_refused_total", listener="public", limit="handshake_timeout") == 1
    assert value(samples, "wsgw_listener_sockets", listener="public") == 0
    assert not daemon.service.gateway.table


def masked_text(payload: bytes) -> bytes:
    """A client text frame (RFC 6455 §5.2) under 64 KiB, masked with a zero key (masking is then the identity)."""
    size = bytes((0x80 | len(payload),)) if len(payload) < 126 else bytes((0xFE,)) + len(payload).to_bytes(2, "big")
    return b"\x81" + size + b"\0\0\0\0" + payload


class Plain:
    """A blocking-free plain socket connected at once (the kernel completes it in the listen backlog, before the
    server accepts), and ``got``: all it has received, read by ``read``."""

    def __init__(self, port: int, request: bytes = b"") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(request)
        self.sock.setblocking(False)
        self.got = b""

    def read(self) -> bytes:
        try:
            while chunk := self.sock.recv(65536):
                self.got += chunk
        except BlockingIOError:
            pass
        return self.got


@pytest_twisted.ensureDeferred
async def test_a_request_waiting_in_the_kernel_outlives_a_reactor_turn_longer_than_the_deadline(
        gateway: StartGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reactor runs due timers before it reads sockets: in a connect storm a turn reading thousands of
    upgrades can outlast handshake_timeout while another socket's whole request waits, unread, in the kernel
    (bench/RESULTS.md "Storm refusals at 10,000"). Here the turn that accepts two sockets outlasts their deadline
    (their deadline timers are made due within it, as a turn longer than handshake_timeout leaves them; the
    30 s handshake_timeout itself never passes): at the next turn both timers run before any read, and the socket
    whose upgrade was sent at connect is still upgraded and subscribes, the silent one gets its 408 right after."""
    daemon = await gateway(redis=None, admin=ADMIN, overrides={"server.handshake_timeout": "30"})
    start, accepted = Ticket.start, []

    def stalled(ticket: Ticket, transport: object) -> None:  # the rest of a long reactor turn, after the accepts
        start(ticket, transport)
        accepted.append(ticket)
        if len(accepted) == 2:
            for each in accepted:  # their deadline passes within this turn, as in a turn longer than it
                each._timer.reset(0)  # type: ignore[union-attr]

    monkeypatch.setattr(Ticket, "start", stalled)
    silent, whole = Plain(daemon.port), Plain(daemon.port, UPGRADE)
    started = reactor.seconds()
    try:
        await wait_until(lambda: b"\r\n\r\n" in whole.read(), "the upgrade's answer", timeout=5)
        assert whole.got.startswith(b"HTTP/1.1 101"), whole.got
        whole.sock.sendall(masked_text(json.dumps({"@type": "subscribe", "jwt": token("alice")}).encode()))
        await wait_until(lambda: b'"subscribed"' in whole.read(), "the subscribed frame", timeout=5)
        await wait_until(lambda: b"too long" in silent.read(), "the silent socket's 408", timeout=5)
        assert silent.got.startswith(b"HTTP/1.1 408"), silent.got
        assert reactor.seconds() - started <= 1.0  # its deadline passed in the accepting turn; answered right after
    finally:
        whole.sock.close()
        silent.sock.close()
    samples = await scrape(daemon)
    assert value(samples, "wsgw_connections_refused_total", listener="public", limit="handshake_timeout") == 1


@pytest_twisted.ensureDeferred
async def test_an_idle_persistent_connection_is_closed_quietly_after_its_answer(gateway: StartGateway) -> None:
    """A keep-alive connection gets its answer, then handshake_timeout to send the next request; idle past it,
    it is closed without a 408 and without counting as refused."""
    daemon = await gateway(redis=None, admin=ADMIN, overrides={"server.handshake_timeout": "1"})
    raw = await raw_connect(daemon.port)
    raw.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    await wait_until(lambda: raw.received.endswith(b"ok\n"), "the first answer")
    await task.deferLater(reactor, 0.6, lambda: None)
    raw.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # within the deadline of the first answer's end
    await wait_until(lambda: raw.received.count(b"ok\n") == 2, "the second answer")
    answer = await raw.wait_lost(3)
    assert answer.count(b"HTTP/1.1 200") == 2 and b"408" not in answer
    samples = await scrape(daemon)
    assert value(samples, "wsgw_connections_refused_total", listener="public", limit="handshake_timeout") == 0


@pytest_twisted.ensureDeferred
async def test_half_open_handshakes_count_toward_the_per_address_cap(gateway: StartGateway) -> None:
    """With max_connections_per_ip = 3, three sockets that started an upgrade and never finished it hold the
    address's three places: a fourth socket gets 429 and is closed, a real client is refused too; once one
    half-open socket goes, the real client gets in."""
    daemon = await gateway(redis=None, admin=ADMIN, extra="[websocket]\nmax_connections_per_ip = 3\n",
                           overrides={"server.handshake_timeout": "30"})
    half = [await raw_connect(daemon.port) for _ in range(3)]
    for raw in half:
        raw.send(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
    guard = daemon.service.public_guard
    await wait_until(lambda: guard.open == 3, "the three half-open sockets to be accepted")
    refused = await exchange(daemon.port, b"")
    assert refused.startswith(b"HTTP/1.1 429") and b"too many connections from this address" in refused
    with pytest.raises(ConnectionError):
        await connect(daemon.port)
    samples = await scrape(daemon)
    assert value(samples, "wsgw_connections_refused_total", listener="public", limit="per_ip") == 2
    assert value(samples, "wsgw_listener_sockets", listener="public") == 3
    half[0].close()
    await wait_until(lambda: guard.open == 2, "the closed socket to be released")
    client = await connect(daemon.port)
    assert (await client.subscribe(token("alice")))["@type"] == "subscribed"
    assert guard.open == 3


@pytest_twisted.ensureDeferred
async def test_the_public_cap_holds_and_the_operator_listener_still_answers(gateway: StartGateway) -> None:
    """With [server] max_connections = 10, ten idle sockets fill the public listener: more sockets (and a
    /healthz) are closed at once, unanswered; /metrics on the operator listener answers and says so; when the
    sockets go, the public listener answers again."""
    daemon = await gateway(redis=None, admin=ADMIN, overrides={"server.max_connections": "10",
                                                               "server.handshake_timeout": "30"})
    idle = [await raw_connect(daemon.port) for _ in range(10)]
    guard = daemon.service.public_guard
    await wait_until(lambda: guard.open == 10, "the ten sockets to be accepted")
    for _ in range(5):
        assert await exchange(daemon.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n") == b""
    samples = await scrape(daemon)
    assert value(samples, "wsgw_listener_sockets", listener="public") == 10
    assert value(samples, "wsgw_listener_sockets_max", listener="public") == 10
    assert value(samples, "wsgw_connections_refused_total", listener="public", limit="total") == 5
    for raw in idle:
        raw.close()
    await wait_until(lambda: guard.open == 0, "the idle sockets to be released")
    assert await healthz(daemon.port) == 200


@pytest_twisted.ensureDeferred
async def test_the_operator_listener_has_its_own_cap_and_deadline(gateway: StartGateway) -> None:
    """[admin] max_connections = 3: three idle sockets fill it, a fourth is closed unanswered; at the deadline
    they get 408 and /metrics answers again, counting both."""
    daemon = await gateway(redis=None, admin=ADMIN, overrides={"admin.max_connections": "3",
                                                               "server.handshake_timeout": "1"})
    idle = [await raw_connect(daemon.admin_port) for _ in range(3)]
    guard = daemon.service.admin_guard
    await wait_until(lambda: guard.open == 3, "the three sockets to be accepted")
    assert await exchange(daemon.admin_port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n") == b""
    for raw in idle:
        assert (await raw.wait_lost(3)).startswith(b"HTTP/1.1 408")
    samples = await scrape(daemon)
    assert value(samples, "wsgw_connections_refused_total", listener="operator", limit="total") == 1
    assert value(samples, "wsgw_connections_refused_total", listener="operator", limit="handshake_timeout") == 3
    assert value(samples, "wsgw_listener_sockets_max", listener="operator") == 3


@pytest.mark.parametrize("body", [b"Content-Length: 5\r\n\r\nhello",
                                  b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"])
@pytest_twisted.ensureDeferred
async def test_a_request_body_on_the_public_listener_is_refused_413(gateway: StartGateway, body: bytes) -> None:
    """Nothing on the public listener takes a body: one is discarded as it arrives and answered 413."""
    daemon = await gateway(redis=None)
    answer = await exchange(daemon.port, b"POST /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + body)
    assert answer.startswith(b"HTTP/1.1 413"), answer


def test_the_public_cap_leaves_room_for_the_operator_listener_and_the_rest() -> None:
    """auto = the open-files limit minus the operator listener's cap and RESERVED_DESCRIPTORS; a configured cap
    above that is lowered to it, one below it is kept."""
    assert public_cap(0, 64, 20000)[0] == 20000 - 64 - RESERVED_DESCRIPTORS
    assert public_cap(0, 0, 20000)[0] == 20000 - 64 - RESERVED_DESCRIPTORS  # an uncapped operator listener: 64
    assert public_cap(50000, 64, 20000)[0] == 20000 - 64 - RESERVED_DESCRIPTORS
    assert "lowered" in public_cap(50000, 64, 20000)[1]
    assert public_cap(100, 64, 20000) == (100, "[server] max_connections")
    assert public_cap(0, 64, 100)[0] == 1
    assert public_cap(0, 64, -1)[0] == (1 << 20) - 64 - RESERVED_DESCRIPTORS  # RLIM_INFINITY


@pytest.mark.parametrize(("headers", "answer"), [
    (b"".join(b"X-%d: 1\r\n" % i for i in range(600)), b"HTTP/1.1 400"),  # over 500 header lines
    (b"".join(b"X-%d: %s\r\n" % (i, b"a" * 100) for i in range(200)), b"HTTP/1.1 400"),  # over 16 KiB in all
    (b"X-Big: " + b"a" * 17_000 + b"\r\n", b""),  # one line over 16 KiB: closed unanswered
])
@pytest_twisted.ensureDeferred
async def test_request_headers_are_bounded_in_lines_and_bytes(gateway: StartGateway, headers: bytes,
                                                              answer: bytes) -> None:
    """The headers of one request are bounded (Twisted's 500 lines, 16 KiB in all and per line): past a bound the
    socket is answered 400 (one line too long: closed unanswered) and closed, and the daemon keeps serving."""
    daemon = await gateway(redis=None)
    got = await exchange(daemon.port, UPGRADE.replace(b"\r\n\r\n", b"\r\n" + headers + b"\r\n"))
    assert got.startswith(answer) and (answer or got == b""), got[:200]
    assert not daemon.service.gateway.table
    assert await healthz(daemon.port) == 200
