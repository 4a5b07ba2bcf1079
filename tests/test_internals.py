"""What wsgw relies on inside Twisted, Autobahn and txredisapi (``wsgw/internals/``), pinned on real sockets on
loopback where there is a socket.

An upgrade of either library that changes one of these fails here, by name, instead of quietly making the
outbound path slower, a limit inert or a shutdown exit non-zero.
"""

from __future__ import annotations

import inspect
import socket
import subprocess
import sys
from typing import Any

import autobahn.websocket.protocol
import pytest_twisted
from autobahn.twisted.websocket import WebSocketServerProtocol
from twisted.application import app
from twisted.internet import reactor, tcp
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.http import HTTPChannel

from tests.support.waiting import wait_until
from tests.support.wsclient import TIMEOUT, Client, connect
from wsgw.internals.autobahn import (
    HANDSHAKE_ONLY,
    IDLE_DEFAULTS,
    BudgetedLog,
    SendQueue,
    ServerFactory,
    ServerProtocol,
)
from wsgw.internals.twisted import (
    IOV_MAX,
    StrictLineChannel,
    buffered,
    clear_exit_signal,
    direct_socket,
    http_channel,
    release_taken_over_request,
    send_direct,
    send_direct_many,
    tcp_listen_address,
    tls_context_factory,
)
from wsgw.internals.txredisapi import WholeReads
from wsgw.logs import LineBudget
from wsgw.web.outbound import Outbound

# --------------------------------------------------------------------------- Twisted


class _Keep(Protocol):
    """A protocol that hands itself over once connected and collects what it receives."""

    def __init__(self, made: Deferred[Any]) -> None:
        self.made = made
        self.received = b""
        self.got: Deferred[None] | None = None
        self.wanted = 0
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.made.callback(self)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.got is not None and len(self.received) >= self.wanted:
            got, self.got = self.got, None
            got.callback(None)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)

    def wait_for(self, size: int) -> Deferred[None]:
        self.wanted = size
        self.got = Deferred()
        if len(self.received) >= size:
            self.dataReceived(b"")
        return self.got.addTimeout(TIMEOUT, reactor)


async def _tcp_pair() -> tuple[_Keep, _Keep, Any]:
    """A server protocol and a client protocol connected on 127.0.0.1; the listening port."""
    server_side: Deferred[Any] = Deferred()
    port = reactor.listenTCP(0, Factory.forProtocol(lambda: _Keep(server_side)), interface="127.0.0.1")
    client_side: Deferred[Any] = Deferred()
    reactor.connectTCP("127.0.0.1", port.getHost().port, ClientFactory.forProtocol(lambda: _Keep(client_side)))
    return await server_side.addTimeout(TIMEOUT, reactor), await client_side.addTimeout(TIMEOUT, reactor), port


async def _tcp_pair_on(port: Any) -> tuple[_Keep, _Keep, Any]:
    """Another pair on the listening ``port`` of ``_tcp_pair``."""
    server_side: Deferred[Any] = Deferred()
    port.factory.protocol = lambda: _Keep(server_side)
    client_side: Deferred[Any] = Deferred()
    reactor.connectTCP("127.0.0.1", port.getHost().port, ClientFactory.forProtocol(lambda: _Keep(client_side)))
    return await server_side.addTimeout(TIMEOUT, reactor), await client_side.addTimeout(TIMEOUT, reactor), port


@pytest_twisted.ensureDeferred
async def test_a_tcp_transport_holds_its_unwritten_bytes_where_buffered_reads_them() -> None:
    """FileDescriptor keeps what ``write`` was given until the reactor flushes it (dataBuffer, offset,
    _tempDataLen): ``buffered`` counts it, then 0; ``direct_socket`` finds the plain TCP socket."""
    server, client, port = await _tcp_pair()
    try:
        transport = server.transport
        assert isinstance(transport, tcp.Connection)
        assert isinstance(direct_socket(transport), socket.socket) and direct_socket(transport) is transport.socket
        assert buffered(transport) == 0
        transport.write(b"x" * 100)
        assert buffered(transport) == 100  # held until the reactor's next write turn
        await client.wait_for(100)
        assert buffered(transport) == 0
    finally:
        server.transport.loseConnection()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_send_direct_never_overtakes_what_the_transport_holds() -> None:
    """While the transport holds bytes ``send_direct`` sends nothing (0), so the peer reads them in order;
    once it is idle the socket takes the data at once."""
    server, client, port = await _tcp_pair()
    try:
        transport = server.transport
        sock = direct_socket(transport)
        assert sock is not None
        transport.write(b"first-")
        assert send_direct(transport, sock, b"second-") == 0
        transport.write(b"second-")
        await client.wait_for(len(b"first-second-"))
        assert send_direct(transport, sock, b"third") == len(b"third")
        await client.wait_for(len(b"first-second-third"))
        assert client.received == b"first-second-third"
    finally:
        server.transport.loseConnection()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_send_direct_many_gathers_frames_in_order_and_never_overtakes_the_transport() -> None:
    """``send_direct_many`` sends nothing while the transport holds bytes, then every frame in order with one
    call (the kernel gathers them); IOV_MAX frames are accepted by one call."""
    server, client, port = await _tcp_pair()
    try:
        transport = server.transport
        sock = direct_socket(transport)
        assert sock is not None
        transport.write(b"first-")
        assert send_direct_many(transport, sock, [b"second-"]) == 0
        transport.write(b"second-")
        await client.wait_for(len(b"first-second-"))
        frames = [b"%d," % i for i in range(IOV_MAX)]
        assert send_direct_many(transport, sock, frames) == len(b"".join(frames))
        await client.wait_for(len(b"first-second-") + len(b"".join(frames)))
        assert client.received == b"first-second-" + b"".join(frames)
    finally:
        server.transport.loseConnection()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_nothing_is_sent_directly_on_a_transport_that_is_closing() -> None:
    """After ``loseConnection`` (``disconnecting``) ``send_direct`` and ``send_direct_many`` send nothing (0): the
    peer reads the end of the stream and no byte before it (they used to reach it). After ``abortConnection``
    (``_aborting``) the same; an ``Outbound`` then hands its frame to the transport, whose write an aborted
    transport never sends, instead of to the socket."""
    server, client, port = await _tcp_pair()
    try:
        transport = server.transport
        sock = direct_socket(transport)
        assert sock is not None
        transport.loseConnection()
        assert transport.disconnecting
        assert send_direct(transport, sock, b"after-close") == 0
        assert send_direct_many(transport, sock, [b"after-", b"close"]) == 0
        await client.lost.addTimeout(TIMEOUT, reactor)
        assert client.received == b""
        server, client, _ = await _tcp_pair_on(port)
        transport = server.transport
        sock = direct_socket(transport)
        assert sock is not None
        out = Outbound(transport, lambda payload: None)
        transport.abortConnection()
        assert not transport.disconnecting and transport._aborting
        assert send_direct(transport, sock, b"after-abort") == 0
        assert send_direct_many(transport, sock, [b"after-", b"abort"]) == 0
        out.write(b"\x81\x05hello")
        assert buffered(transport) == 7  # Twisted's, never written: nothing went to the socket
        await client.lost.addTimeout(TIMEOUT, reactor)
        assert client.received == b""
    finally:
        await port.stopListening()


def test_transports_that_are_not_plain_tcp_get_no_direct_socket() -> None:
    """A transport that is not Twisted's TCP connection (TLS wraps it, tests fake it) goes through write()."""
    assert direct_socket(StringTransport()) is None


def test_an_http_channel_keeps_its_requests_in_a_list() -> None:
    """``HTTPChannel.requests`` is the list the upgrade empties to break the channel/request cycle."""
    channel = HTTPChannel()
    assert channel.requests == []

    class Request:
        pass

    request = Request()
    request.channel = channel  # type: ignore[attr-defined]
    channel.transport = None  # type: ignore[assignment]  # taken over: the WebSocket protocol owns the socket
    channel.requests = [request]
    release_taken_over_request(request)
    assert channel.requests == []


def test_a_site_builds_its_channels_with_its_protocol_and_a_line_receiver_keeps_the_line_being_read() -> None:
    """``HTTPFactory.protocol`` builds each channel (wrapped in ``_GenericHTTPChannelProtocol``, ``http_channel``
    the same way); LineReceiver holds the unfinished line in ``_buffer`` and ``_busyReceiving`` while it reads;
    ``_respondToBadRequestAndDisconnect`` answers 400 and closes."""
    from twisted.web.http import HTTPFactory, _genericHTTPChannelProtocolFactory
    from twisted.web.server import Site

    assert HTTPFactory.protocol is _genericHTTPChannelProtocolFactory
    built = http_channel(Site(None))
    assert type(built) is type(_genericHTTPChannelProtocolFactory(Site(None)))
    assert isinstance(built._channel, StrictLineChannel)
    channel = HTTPChannel()
    transport = StringTransport()
    channel.makeConnection(transport)
    assert not channel._busyReceiving and not channel.paused
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost")
    assert channel._buffer == b"Host" and channel.line_mode
    channel._respondToBadRequestAndDisconnect()
    assert transport.value() == b"HTTP/1.1 400 Bad Request\r\n\r\n" and transport.disconnecting


def test_twistd_reads_the_exit_signal_from_the_reactor() -> None:
    """twistd re-raises ``reactor._exitSignal`` at exit; ``clear_exit_signal`` empties it (a designed
    shutdown exits 0: tests/test_twistd.py checks it end to end)."""
    assert "reactor._exitSignal" in inspect.getsource(app.ApplicationRunner)
    assert reactor._exitSignal is None  # type: ignore[attr-defined]

    class Stopped:
        _exitSignal = 15

    stopped = Stopped()
    clear_exit_signal(stopped)
    assert stopped._exitSignal is None


def test_tcp_and_ssl_endpoints_keep_their_address_and_tls_context_where_the_workers_read_them(tmp_path) -> None:
    """``tcp:``, ``tcp6:`` and ``ssl:`` endpoint strings parse to endpoints holding interface, port and backlog
    (the supervisor binds a SO_REUSEPORT socket per worker there) and, for ``ssl:``, the context factory a worker
    wraps its inherited socket with; other kinds are not TCP."""
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.interfaces import IOpenSSLServerConnectionCreator

    assert tcp_listen_address(serverFromString(reactor, "tcp:5050:interface=127.0.0.1:backlog=77")) == \
        ("127.0.0.1", 5050, 77)
    assert tcp_listen_address(serverFromString(reactor, "tcp6:5050")) == ("::", 5050, 50)
    assert tcp_listen_address(serverFromString(reactor, f"unix:{tmp_path}/s")) is None
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
                    "-keyout", str(key), "-out", str(cert), "-days", "1"], check=True, capture_output=True, timeout=60)
    tls = serverFromString(reactor, f"ssl:5443:interface=127.0.0.1:privateKey={key}:certKey={cert}")
    assert tcp_listen_address(tls) == ("127.0.0.1", 5443, 50)
    assert IOpenSSLServerConnectionCreator.providedBy(tls_context_factory(tls))


# --------------------------------------------------------------------------- Autobahn


class _Probe(ServerProtocol):
    """Records what the fenced hooks see."""

    def onOpen(self) -> None:
        self.factory.seen["dict"] = set(self.__dict__)
        self.factory.seen["shed_as_before"] = _shed_as_before(self.__dict__)
        self.shed_handshake_state()
        self.factory.seen["opened"].callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.seen["messages"].append(payload)

    def message_too_big(self, limit: int) -> None:
        self.factory.seen["too_big"] = limit
        self.start_close(1009, "too big")

    def before_close_frame(self) -> None:
        self.factory.seen["before_close"] += 1


def _shed_as_before(attrs: dict[str, Any]) -> dict[str, Any]:
    """What ``shed_handshake_state`` made of an instance dict before it was one pass (bench/RESULTS.md "Connect
    path", part 4), on a copy."""
    attrs = dict(attrs)
    for name in HANDSHAKE_ONLY:
        attrs.pop(name, None)
    for name, default in IDLE_DEFAULTS.items():
        if name in attrs and attrs[name] is default:
            del attrs[name]
    if not attrs.get("send_queue", True):
        attrs["send_queue"] = SendQueue()
    return dict(attrs)


def _listen(clock: Any = reactor, **options: Any) -> tuple[Any, ServerFactory]:
    factory = ServerFactory(reactor, clock)
    factory.protocol = _Probe  # type: ignore[assignment]
    factory.setProtocolOptions(**options)
    factory.seen = {"messages": [], "before_close": 0, "opened": Deferred()}  # type: ignore[attr-defined]
    return reactor.listenTCP(0, factory, interface="127.0.0.1"), factory


@pytest_twisted.ensureDeferred
async def test_the_handshake_only_attributes_exist_until_shed() -> None:
    """Every name in HANDSHAKE_ONLY is on a protocol after its opening handshake (a rename would make shedding
    silently keep it); after shedding, the class-level stand-ins answer the ones read later."""
    port, factory = _listen()
    try:
        client = await connect(port.getHost().port)
        server = await factory.seen["opened"].addTimeout(TIMEOUT, reactor)  # type: ignore[attr-defined]
        missing = set(HANDSHAKE_ONLY) - factory.seen["dict"]  # type: ignore[attr-defined]
        assert not missing, f"Autobahn no longer sets {missing}"
        assert not set(HANDSHAKE_ONLY) & set(server.__dict__)
        assert dict(server.http_headers) == {} and server.websocket_origin is None
        client.send_json({"still": "working"})
        client.sendClose(1000)
        await client.wait_closed()
        assert factory.seen["messages"] == [b'{"still": "working"}']  # type: ignore[attr-defined]
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_shedding_in_one_pass_keeps_what_the_two_passes_kept() -> None:
    """The instance dict after shedding holds the same names in the same order, the same objects (a new empty
    ``SendQueue`` for the empty send queue) and has the same size as the previous pops and copy gave."""
    port, factory = _listen(autoPingInterval=30.0)
    try:
        client = await connect(port.getHost().port)
        server = await factory.seen["opened"].addTimeout(TIMEOUT, reactor)  # type: ignore[attr-defined]
        before = factory.seen["shed_as_before"]  # type: ignore[attr-defined]
        assert list(server.__dict__) == list(before)
        assert [n for n, v in server.__dict__.items() if v is not before[n] and n != "send_queue"] == []
        assert type(server.__dict__["send_queue"]) is type(before["send_queue"])
        assert sys.getsizeof(server.__dict__) == sys.getsizeof(before)
        client.sendClose(1000)
        await client.wait_closed()
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_after_shedding_options_are_the_factorys_and_idle_state_the_class_defaults() -> None:
    """No socket holds a copy of the factory's options (read through the factory); shedding also drops the
    state attributes still at their class-level default: the instance dict is then under half its size,
    Autobahn's empty send queue a list, and the socket still works both ways."""
    port, factory = _listen(autoPingInterval=30.0, maxFramePayloadSize=1000)
    try:
        client = await connect(port.getHost().port)
        server = await factory.seen["opened"].addTimeout(TIMEOUT, reactor)  # type: ignore[attr-defined]
        assert not set(server.CONFIG_ATTRS) & set(server.__dict__)
        assert [n for n in server.CONFIG_ATTRS if getattr(server, n) != getattr(factory, n)] == []
        assert server.autoPingInterval == 30.0 and server.maxFramePayloadSize == 1000
        assert server.wasClean is False and server.localCloseCode is None
        assert sys.getsizeof(server.__dict__) < 900, sorted(server.__dict__)
        assert sys.getsizeof(server.send_queue) < 100
        assert isinstance(server, _Probe)
        factory.setProtocolOptions(autoPingInterval=20.0)  # (again: the options as they are now)
        assert factory.protocol.__bases__ == (_Probe,) and factory.protocol.autoPingInterval == 20.0
        client.send_json({"still": "working"})
        server.sendMessage(b'{"from": "server"}')
        assert await client.next() == {"from": "server"}
        client.sendClose(1000)
        assert (await client.wait_closed())[0] == 1000
        assert factory.seen["messages"] == [b'{"still": "working"}']  # type: ignore[attr-defined]
        assert server.wasClean is True
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_an_oversized_message_reaches_message_too_big_with_the_limit() -> None:
    """Autobahn calls ``_max_message_size_exceeded`` for a message over maxMessagePayloadSize: the fence hands
    the limit to ``message_too_big``, and the message is never delivered."""
    port, factory = _listen(maxMessagePayloadSize=64, maxFramePayloadSize=64)
    try:
        client = await connect(port.getHost().port)
        client.sendMessage(b"x" * 100)
        assert (await client.wait_closed())[0] == 1009
        assert factory.seen["too_big"] == 64  # type: ignore[attr-defined]
        assert factory.seen["messages"] == []  # type: ignore[attr-defined]
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_after_start_close_arriving_frames_are_dropped_and_the_close_frame_goes_through_the_hook() -> None:
    """``start_close`` sends any close code (1003 included), runs ``before_close_frame`` first, and sets
    failedByMe so that what the client still sends is not delivered; a second call does nothing."""
    port, factory = _listen()
    try:
        client = await connect(port.getHost().port)
        server = await factory.seen["opened"].addTimeout(TIMEOUT, reactor)  # type: ignore[attr-defined]
        assert server.start_close(1003, "bad data") is True
        assert server.start_close(1003, "again") is False
        client.send_json({"late": True})
        assert await client.wait_closed() == (1003, "bad data")
        assert factory.seen["messages"] == []  # type: ignore[attr-defined]
        assert factory.seen["before_close"] == 1  # type: ignore[attr-defined]
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_autobahns_timers_run_on_the_factorys_clock() -> None:
    """The protocol's handshake, ping and close timers go through ``factory._batched_timer``; ServerFactory's
    runs on the clock it is given, so a test clock drives Autobahn's auto-ping."""
    clock = Clock()
    port, factory = _listen(clock, autoPingInterval=30, autoPingTimeout=60)
    try:
        client = await connect(port.getHost().port)
        await factory.seen["opened"].addTimeout(TIMEOUT, reactor)  # type: ignore[attr-defined]
        assert clock.getDelayedCalls(), "the ping timer is not on the injected clock"
        pinged: Deferred[None] = Deferred()
        client.onPing = lambda payload: pinged.called or pinged.callback(None)  # type: ignore[method-assign]
        clock.advance(30.3)  # the 30 s ping, in its 0.2 s bucket
        await pinged.addTimeout(TIMEOUT, reactor)
        client.sendClose(1000)
        await client.wait_closed()
    finally:
        await port.stopListening()


def test_the_factorys_timer_never_fires_early_even_under_a_second() -> None:
    """txaio truncates ``now + delay`` to the second, so a 0.5 s delay fired at once (a 0.5 s ping interval
    pinged thousands of times a second); ServerFactory's timer fires in the first 0.2 s bucket after it."""
    clock = Clock()
    clock.advance(100.3)
    timer = ServerFactory(reactor, clock)._batched_timer
    fired: list[str] = []
    timer.call_later(0.5, fired.append, "half")
    timer.call_later(0.45, fired.append, "same bucket")  # both in the bucket of 100.8
    cancelled = timer.call_later(0.5, fired.append, "cancelled")
    cancelled.cancel()
    clock.advance(0.49)
    assert fired == []
    clock.advance(0.02)
    assert fired == ["half", "same bucket"]
    timer.call_later(30, fired.append, "ping")
    clock.advance(29.9)
    assert fired == ["half", "same bucket"]
    clock.advance(0.3)
    assert fired[-1] == "ping"


def test_with_a_budget_the_sockets_log_info_warn_and_error_within_it_and_debug_as_autobahn() -> None:
    """A ServerFactory with a log budget gives each protocol a BudgetedLog: Autobahn's info, warn and error lines
    about the socket count as kind ``websocket``; debug is Autobahn's own bound method, nothing in between."""
    clock = Clock()
    budget = LineBudget(clock, per_minute=2)
    factory = ServerFactory(reactor, clock, log_budget=budget)
    factory.protocol = ServerProtocol
    protocol: Any = factory.buildProtocol(None)
    assert isinstance(protocol.log, BudgetedLog) and protocol.log is factory.buildProtocol(None).log
    assert protocol.log.debug == WebSocketServerProtocol.log.debug
    protocol.log.info("an info")
    protocol.log.warn("a warning")
    protocol.log.error("an error")
    assert budget.suppressed == {"websocket": 1}
    plain: Any = ServerFactory(reactor, clock)
    plain.protocol = ServerProtocol
    assert plain.buildProtocol(None).log is WebSocketServerProtocol.log


def test_the_fenced_hooks_still_exist_in_autobahn() -> None:
    """The private names the fence overrides or sets are still Autobahn's, with the signatures it calls."""
    assert list(inspect.signature(WebSocketServerProtocol._max_message_size_exceeded).parameters) == [
        "self", "msg_size", "max_msg_size", "reason"]
    assert list(inspect.signature(WebSocketServerProtocol.sendCloseFrame).parameters) == [
        "self", "code", "reasonUtf8", "isReply"]
    assert list(inspect.signature(WebSocketServerProtocol.dropConnection).parameters) == ["self", "abort"]
    source = inspect.getsource(autobahn.websocket.protocol)
    assert "if not self.failedByMe" in source
    assert "self.dropConnection(abort=False)" in source  # the reply to a peer's close: waits for the flush
    assert "self.factory._batched_timer.call_later(" in source
    assert "self.log.warn(" in source and "self.log.debug(" in source  # what BudgetedLog stands in for
    import txaio._common as txaio_common  # the batched timer's internals that ServerFactory's timer uses

    assert list(inspect.signature(txaio_common._BatchedCall).parameters) == ["timer", "index", "the_call"]
    timer_source = inspect.getsource(txaio_common._BatchedTimer)
    for name in ("self._buckets[real_time]", "def _notify_bucket(self, real_time)", "self._get_seconds",
                 "self._create_delayed_call", "self._bucket_milliseconds", "def _remove_call(self, real_time, call)"):
        assert name in timer_source, name


# --------------------------------------------------------------------------- txredisapi


def test_txredisapi_hands_the_rest_of_a_read_after_a_bulk_string_to_set_line_mode() -> None:
    """``BaseRedisProtocol`` calls ``setLineMode(extra)`` with what follows a bulk string: ``WholeReads`` parses
    it in the same call, so every reply of one read reaches its waiter at once (no reactor turn each)."""
    protocol = WholeReads(charset=None, convertNumbers=False)
    protocol.callLater = Clock().callLater  # (WholeReads never uses it: a late parse would need advancing)
    protocol.makeConnection(StringTransport())
    answers: list[Any] = []
    for _ in range(3):
        protocol.replyQueue.get().addCallback(answers.append)
    protocol.dataReceived(b"$2\r\nab\r\n*2\r\n$1\r\nc\r\n:4\r\n+OK\r\n")
    assert answers == [b"ab", [b"c", 4], "OK"]


class _Opened(_Probe):
    def onOpen(self) -> None:
        self.factory.seen.setdefault("all", []).append(self)
        if not self.factory.seen["opened"].called:
            self.factory.seen["opened"].callback(self)


@pytest_twisted.ensureDeferred
async def test_first_pings_are_spread_over_the_second_half_of_the_interval() -> None:
    """Sockets opened together (a connect storm) would all come due for their keepalive ping together, every
    interval, a burst of CPU that delays events (bench/RESULTS.md "Idle cost at N = 10,000"): each socket's first
    ping is at a random point of the interval's second half, never later than the interval (PROTOCOL.md: a ping
    every ``ping_interval``), and the pings after it every interval, from the class's option."""
    clock = Clock()
    port, factory = _listen(clock, autoPingInterval=30, autoPingTimeout=60)
    factory.protocol.__bases__ = (_Opened,)  # (setProtocolOptions' subclass of _Probe, on _Opened instead)
    clients = []
    try:
        for _ in range(12):
            clients.append(await connect(port.getHost().port))
        await wait_until(lambda: len(factory.seen.get("all", [])) == 12, "12 sockets open")  # type: ignore[attr-defined]
        servers = factory.seen["all"]  # type: ignore[attr-defined]
        due = sorted(s.autoPingPendingCall._index / 1000 for s in servers)
        assert 15 <= due[0] and due[-1] <= 30.2, due  # (the timer's 0.2 s buckets)
        assert len(set(due)) >= 6, due  # not one burst
        assert all("autoPingInterval" not in s.__dict__ and s.autoPingInterval == 30 for s in servers)
        pinged: list[Any] = []
        for client in clients:
            client.onPing = lambda payload, c=client: (pinged.append(c), Client.onPing(c, payload))  # type: ignore[method-assign]
        clock.advance(30.3)
        await wait_until(lambda: len(pinged) == 12, "every first ping, within the interval")
        await wait_until(lambda: all(s.autoPingPendingCall is not None for s in servers), "the pongs")
        assert {s.autoPingPendingCall._index / 1000 for s in servers} == {60.4}  # 30 s after the pongs, bucketed
    finally:
        for client in clients:
            client.sendClose(1000)
        await port.stopListening()
