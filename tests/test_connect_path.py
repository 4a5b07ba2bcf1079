"""The connect path's savings (bench/RESULTS.md "Connect path") leave every limit as it was."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.abstract import FileDescriptor
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource

from tests.support.daemon import StartGateway, token, workspace
from tests.support.wsclient import connect
from wsgw.internals.autobahn import _BatchedTimer
from wsgw.web.listener import BoundedRequest, GuardedSite, ListenerGuard
from wsgw.web.protocols import GatewayFactory


def _site(deadline: float) -> GuardedSite:
    return GuardedSite(Resource(), ListenerGuard(Clock(), "public", deadline=deadline), BoundedRequest)


def test_twisted_webs_idle_timer_is_off_only_where_the_deadline_fires_first() -> None:
    """A socket of a GuardedSite whose deadline is at most twisted.web's idle timeout gets no idle timer (one
    ``callLater`` and its cancel less per connection); without a deadline, or a longer one, it keeps it."""
    default = GuardedSite.timeOut
    assert default == 60
    for deadline, expected in ((10.0, None), (60.0, None), (0.0, default), (120.0, default)):
        site = _site(deadline)
        assert site.timeOut == expected, deadline
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert channel is not None
        channel.makeConnection(StringTransport())
        http: Any = channel._inner._channel  # type: ignore[attr-defined]  # (twisted.web's HTTPChannel)
        timer = http._TimeoutMixin__timeoutCall
        assert (http.timeOut, timer is None) == (expected, expected is None)
        http.setTimeout(None)  # (the reactor's timer, if any, cancelled)


def test_with_the_idle_timer_off_a_silent_socket_still_closes_at_the_deadline() -> None:
    site = _site(10.0)
    clock = site.guard.clock
    assert isinstance(clock, Clock)
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    assert channel is not None
    transport = StringTransport()
    channel.makeConnection(transport)
    clock.advance(9.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting and transport.value().startswith(b"HTTP/1.1 408 ")


def test_a_sockets_deadline_is_one_timer_moved_on_when_a_websocket_claims_it() -> None:
    """The deadline runs from accept, and again in full from a WebSocket's claim: the same timer moved on
    (``reset``), not a cancel and a new one per socket; it still refuses at the deadline from the claim."""
    clock = Clock()
    guard = ListenerGuard(clock, "public", deadline=10.0)
    ticket = guard.admit("127.0.0.1")
    assert ticket is not None
    transport = StringTransport()
    ticket.start(transport)
    [timer] = clock.getDelayedCalls()
    clock.advance(6)
    ticket.claim()
    assert clock.getDelayedCalls() == [timer] and timer.getTime() == 16.0
    clock.advance(9.9)
    assert not transport.disconnecting and guard.refused["handshake_timeout"] == 0
    clock.advance(0.1)
    clock.advance(0)  # (acted on a reactor turn after it is due)
    assert transport.disconnecting and guard.refused["handshake_timeout"] == 1
    assert clock.getDelayedCalls() == []


def test_an_opened_websocket_leaves_no_deadline_timer_and_an_answered_request_gets_a_new_one() -> None:
    clock = Clock()
    guard = ListenerGuard(clock, "public", deadline=10.0)
    ticket = guard.admit("127.0.0.1")
    assert ticket is not None
    ticket.start(StringTransport())
    ticket.busy()  # a request being answered: no deadline
    assert clock.getDelayedCalls() == []
    ticket.idle()  # answered: the next request within the deadline
    [timer] = clock.getDelayedCalls()
    assert timer.getTime() == 10.0
    clock.advance(3)
    ticket.claim()
    assert clock.getDelayedCalls() == [timer] and timer.getTime() == 13.0
    ticket.opened()
    assert clock.getDelayedCalls() == [] and not timer.active()


def _factory(guard: ListenerGuard | None) -> Any:
    return GatewayFactory(None, None, reactor, Clock(), max_frame=1024, ping_interval=30, pong_timeout=60,  # type: ignore[arg-type]
                          guard=guard, handshake_timeout=10.0)


def test_autobahns_handshake_timer_is_armed_only_where_no_ticket_bounds_the_handshake() -> None:
    """A socket the guard admitted has its ticket's deadline, from the claim: Autobahn's own open-handshake timer
    (a second timer per socket) is not armed; without a guard, or for a socket the guard does not know, it is."""
    guard = ListenerGuard(Clock(), "public", deadline=10.0)
    ticket = guard.admit("127.0.0.1")
    assert ticket is not None
    ticketed = StringTransport()
    ticket.start(ticketed)
    for factory_guard, transport, armed in ((guard, ticketed, False), (guard, StringTransport(), True),
                                            (None, StringTransport(), True)):
        protocol = _factory(factory_guard).buildProtocol(None)
        protocol.makeConnection(transport)
        assert (protocol.openHandshakeTimeoutCall is not None) == armed, (factory_guard, armed)
        assert protocol.openHandshakeTimeout == (0 if not armed else 10.0)
    assert ticket.claimed and len(guard.clock.getDelayedCalls()) == 1  # type: ignore[attr-defined]
    shorter = ListenerGuard(Clock(), "public", deadline=20.0)  # a deadline longer than the handshake's
    assert _factory(shorter).protocol.openHandshakeTimeout == 10.0


@pytest_twisted.ensureDeferred
async def test_the_handshake_answer_goes_onto_the_socket_and_no_second_timer_runs(
        gateway: StartGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client's 101 is sent on the socket at once, not through Twisted's write buffer (no epoll registration
    and reactor turn for it), and only the ticket times the handshake; the socket opens and subscribes."""
    buffered: list[bytes] = []
    real_write = FileDescriptor.write
    monkeypatch.setattr(FileDescriptor, "write", lambda self, data: (buffered.append(data), real_write(self, data))[1])
    timers: list[str] = []
    real_call_later = _BatchedTimer.call_later
    monkeypatch.setattr(_BatchedTimer, "call_later", lambda self, delay, func, *a, **kw: (
        timers.append(getattr(func, "__name__", "")), real_call_later(self, delay, func, *a, **kw))[1])
    daemon = await gateway(redis=None)
    client = await connect(daemon.port, "/ws")
    assert (await client.subscribe(token("u1", [workspace("w1", "home", "ds/home")])))["@type"] == "subscribed"
    assert not [d for d in buffered if d.startswith(b"HTTP/1.1 101")], buffered
    assert "onOpenHandshakeTimeout" not in timers and "_sendAutoPing" in timers, timers
    [session] = list(daemon.service.gateway.table)
    protocol: Any = session.connection
    sent = protocol.trafficStats.preopenOutgoingOctetsWireLevel  # Autobahn's count, kept
    assert sent == len(client.http_response_data) > 0, (sent, client.http_response_data)
    client.sendClose()
    await client.wait_closed()
