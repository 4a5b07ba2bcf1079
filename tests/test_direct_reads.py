"""Reads without Twisted's legacy log context (``wsgw.internals.twisted.read_directly``, issue 13, goal 2): the
bus subscriber's reads skip ``log.callWithLogger``; what it receives, and how a closed or failing connection
ends, is what Twisted's own ``doPoll`` gives."""

from __future__ import annotations

import hashlib
import inspect
import uuid
from typing import Any

import pytest_twisted
from twisted.application._client_service import _ReconnectingProtocolProxy
from twisted.internet import reactor, tcp
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, _WrappingProtocol
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.error import ConnectionDone
from twisted.internet.posixbase import _PollLikeMixin
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python import log

from tests.support.redis_server import shared_endpoint
from tests.support.wsclient import TIMEOUT
from wsgw.bus.redis import RedisBus
from wsgw.internals.twisted import read_directly, stop_reading_directly


def test_the_copied_code_is_twisteds_own() -> None:
    """``_poll`` copies ``EPollReactor.doPoll`` and ``_doReadOrWrite``'s read branch, ``_recv``
    ``tcp.Connection.doRead`` and ``_dataReceived``, past the wrappers that forward ``dataReceived``: a new
    Twisted that changes any of them must be read again (then update these hashes)."""
    functions = (EPollReactor.doPoll, _PollLikeMixin._doReadOrWrite, tcp.Connection.doRead,
                 tcp.Connection._dataReceived, _WrappingProtocol.dataReceived, _ReconnectingProtocolProxy.__getattr__)
    assert [hashlib.sha256(inspect.getsource(f).encode()).hexdigest()[:16] for f in functions] == [
        "09b62ae68ef01b4b", "5ffee55b79492b00", "20ac74ffecd6b7f2", "7ed147aeca0c7f8a", "3ea65a2452146f7a",
        "1058c82aa3e1f5c0"]


def test_only_twisteds_epoll_reactor_and_plain_connections_read_directly() -> None:
    assert not read_directly(Clock(), StringTransport())
    assert not read_directly(reactor, StringTransport())
    stop_reading_directly(Clock(), StringTransport())  # nothing to undo: no error


class _Peer(Protocol):
    """Collects what it receives; ``crash_on`` makes ``dataReceived`` raise on those bytes."""

    def __init__(self, made: Deferred[Any], crash_on: bytes = b"") -> None:
        self.made = made
        self.crash_on = crash_on
        self.received = b""
        self.lost: Deferred[None] = Deferred()
        self.reason: Any = None

    def connectionMade(self) -> None:
        self.made.callback(self)

    def dataReceived(self, data: bytes) -> None:
        if self.crash_on and self.crash_on in data:
            raise ZeroDivisionError("a bug in a read")
        self.received += data

    def connectionLost(self, reason: Any) -> None:
        self.reason = reason
        self.lost.callback(None)


async def _pair(direct: bool, crash_on: bytes = b"", into: bool = False) -> tuple[_Peer, _Peer, Any]:
    """A server side and a client side on 127.0.0.1, the client connected through an endpoint (its protocol behind
    a ``_WrappingProtocol``); it reads directly when ``direct``, into its protocol when ``into``."""
    server_side: Deferred[Any] = Deferred()
    port = reactor.listenTCP(0, Factory.forProtocol(lambda: _Peer(server_side)), interface="127.0.0.1")
    client_side: Deferred[Any] = Deferred()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
    endpoint.connect(ClientFactory.forProtocol(lambda: _Peer(client_side, crash_on)))
    server, client = await server_side.addTimeout(TIMEOUT, reactor), await client_side.addTimeout(TIMEOUT, reactor)
    assert type(client.transport.protocol) is _WrappingProtocol
    if direct:
        assert read_directly(reactor, client.transport, client if into else None)
    return server, client, port


_WAYS = [(True, False), (True, True), (False, False)]  # (direct, into): doRead, into the protocol, Twisted's own


async def _until(condition: Any) -> None:
    for _ in range(500):
        if condition():
            return
        await _sleep(0.01)
    raise AssertionError("timed out")


def _sleep(seconds: float) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


def _counting(monkeypatch: Any, transport: Any) -> list[Any]:
    calls: list[Any] = []
    original = log.callWithLogger

    def counted(logger: Any, func: Any, *args: Any, **kw: Any) -> Any:
        if logger is transport:
            calls.append(func)
        return original(logger, func, *args, **kw)

    monkeypatch.setattr(log, "callWithLogger", counted)
    return calls


@pytest_twisted.ensureDeferred
async def test_a_direct_read_gets_the_same_bytes_without_the_log_context_and_ends_as_before(monkeypatch: Any) -> None:
    """The bytes arrive whole and in order, no ``callWithLogger`` for the reads; the peer's close reaches
    ``connectionLost`` as a clean ``ConnectionDone``, through Twisted's own handling."""
    for direct, into in _WAYS:
        server, client, port = await _pair(direct, into=into)
        calls = _counting(monkeypatch, client.transport)
        sent = b"".join(b"%05d" % i for i in range(2000))
        server.transport.write(sent)
        await _until(lambda client=client, sent=sent: len(client.received) >= len(sent))
        assert client.received == sent
        assert (len(calls) == 0) == direct
        server.transport.loseConnection()
        await client.lost.addTimeout(TIMEOUT, reactor)
        assert client.reason.check(ConnectionDone)
        assert len(calls) >= 1  # the close: in the transport's log context, as Twisted does
        stop_reading_directly(reactor, client.transport)
        monkeypatch.undo()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_read_that_raises_is_logged_and_drops_the_connection_as_twisteds_does() -> None:
    """An exception from ``dataReceived``: logged with its traceback, the connection lost with that exception,
    directly or not."""
    outcomes = []
    for direct, into in _WAYS:
        server, client, port = await _pair(direct, crash_on=b"boom", into=into)
        events: list[dict[str, Any]] = []
        log.addObserver(events.append)  # log.err, as Twisted's _doReadOrWrite logs it
        try:
            server.transport.write(b"boom")
            await client.lost.addTimeout(TIMEOUT, reactor)
        finally:
            log.removeObserver(events.append)
        failures = [e["failure"] for e in events if e.get("isError") and e.get("failure") is not None]
        outcomes.append((client.reason.type, [f.type for f in failures]))
        stop_reading_directly(reactor, client.transport)
        await port.stopListening()
    assert outcomes == [(ZeroDivisionError, [ZeroDivisionError])] * 3


@pytest_twisted.ensureDeferred
async def test_a_protocol_not_behind_forwarding_wrappers_is_not_read_into() -> None:
    """Given a protocol its transport's reads do not end at, the transport reads as Twisted's own: every byte
    still reaches the protocol the transport has."""
    server, client, port = await _pair(False)
    stranger = _Peer(Deferred())
    assert read_directly(reactor, client.transport, stranger)
    server.transport.write(b"hello")
    await _until(lambda: client.received == b"hello")
    assert stranger.received == b""
    stop_reading_directly(reactor, client.transport)
    client.transport.loseConnection()
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_the_bus_subscriber_reads_directly_while_connected_and_its_messages_arrive() -> None:
    """On Twisted's epoll reactor the subscriber connection reads directly from its connect to its loss; the
    messages published arrive, in order."""
    prefix = f"wsgw-direct-{uuid.uuid4().hex[:12]}"
    bus = RedisBus(reactor, shared_endpoint(), {"tree": f"{prefix}.tree"})
    got: list[tuple[str, bytes]] = []
    bus.listen(lambda topic, payload: got.append((topic, payload)))
    bus.startService()
    try:
        await bus.whenConnected().addTimeout(TIMEOUT, reactor)
        transport = bus._subscriber._ready.transport
        read = reactor.__dict__["_wsgw_direct_reads"][transport]
        assert read.args == (transport, bus._subscriber._ready.dataReceived)  # into the protocol, past the wrappers
        for i in range(20):
            await bus.publish("tree", b"%d" % i)
        await _until(lambda: len(got) >= 20)
        assert got == [("tree", b"%d" % i) for i in range(20)]
    finally:
        await bus.stopService()
    await _until(lambda: transport not in reactor.__dict__["_wsgw_direct_reads"])
