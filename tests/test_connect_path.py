"""The connect path's savings (bench/RESULTS.md "Connect path") leave every limit as it was."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource

from wsgw.web.listener import BoundedRequest, GuardedSite, ListenerGuard


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
