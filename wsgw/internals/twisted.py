"""What wsgw relies on inside Twisted, beyond its public API (pinned by tests/test_internals.py).

- ``twisted.internet.abstract.FileDescriptor``'s ``dataBuffer``, ``offset``, ``_tempDataLen`` and
  ``tcp.Connection``'s ``socket``: ``wsgw.internals.direct`` (compiled, on the per-delivery path) sends on the
  socket directly while the transport holds nothing; its names are importable from here too.
- ``twisted.web.http.HTTPChannel.requests``: the requests of a channel; after
  Autobahn's takeover the channel and its request point at each other, a
  cycle only a full garbage collection frees.
- a protocol is replaced on its transport (a WebSocket takeover) by setting
  ``transport.protocol``, or behind TLS the wrapper's ``wrappedProtocol``:
  ``take_over`` does it as Autobahn's ``WebSocketResource.render`` does.
- ``reactor._exitSignal``: the signal that stopped the reactor, which twistd
  re-raises at exit (status 143 for SIGTERM) even after a designed shutdown.
- ``TCP4ServerEndpoint``, ``TCP6ServerEndpoint`` and ``SSL4ServerEndpoint`` keep what its
  string says in ``_interface``, ``_port``, ``_backlog``: the supervisor of
  ``[server] workers`` binds one ``SO_REUSEPORT`` socket per worker there.
- ``EPollReactor.doPoll`` and ``_doReadOrWrite``: ``read_directly`` has the
  reactor's iteration run a compiled copy of ``doPoll`` (``wsgw.internals.loop``,
  pinned by the source's hash in tests) that calls a registered transport's ``doRead()`` itself when its
  descriptor is only readable, without ``log.callWithLogger`` (a log prefix
  call, two dict copies and six calls per read, only for the legacy
  ``log.msg`` context, which nothing on a bus read uses); a read that fails or
  ends the connection is handed to ``_doReadOrWrite``'s own handling inside
  that context, as before. Given the protocol behind a client endpoint's
  ``_WrappingProtocol`` and ``ClientService``'s proxy (which forward
  ``dataReceived`` unchanged), it reads as ``tcp.Connection.doRead`` does and
  hands the bytes to that protocol itself (three calls fewer per read).
- ``ReactorBase.mainLoop``, ``runUntilCurrent``, ``timeout`` and the timed-call
  lists: ``run_natively`` has ``reactor.run()`` iterate with a compiled copy
  that calls ``runUntilCurrent`` only when it has work (``wsgw.internals.loop``).
- ``twisted.web.http._GenericHTTPChannelProtocol``, the wrapper ``Site`` puts around each ``HTTPChannel``
  (``HTTPFactory.protocol``), and ``LineReceiver``'s ``_buffer`` (the line being read), ``_busyReceiving`` and
  ``paused``, and ``HTTPChannel._respondToBadRequestAndDisconnect`` (twisted.web's answer to a malformed line):
  ``http_channel`` builds twisted.web's channel as ``StrictLineChannel``, which answers a line that can never end
  at once (``wsgw.web.listener.GuardedSite``, both listeners).
- ``SSL4ServerEndpoint._sslContextFactory``: the TLS context factory an
  ``ssl:`` endpoint string describes; a worker (wsgw/workers/child.py) wraps
  the listening socket it inherited with it, as the endpoint's own listen would.
"""

from __future__ import annotations

import functools
from typing import Any

from twisted.internet import tcp
from twisted.internet.protocol import Factory
from twisted.protocols.policies import ProtocolWrapper
from twisted.web.http import HTTPChannel, _GenericHTTPChannelProtocol

from wsgw.internals.direct import IOV_MAX as IOV_MAX  # (re-exported: their former home)
from wsgw.internals.direct import buffered as buffered
from wsgw.internals.direct import direct_socket as direct_socket
from wsgw.internals.direct import send_direct as send_direct
from wsgw.internals.direct import send_direct_many as send_direct_many
from wsgw.internals.loop import main_loop, poll, recv


def release_taken_over_request(request: Any) -> None:
    """After a WebSocket takeover of ``request``'s channel, let reference counting free the channel and its
    request (not the 426 page, which still uses the channel)."""
    channel = request.channel
    if channel is not None and channel.transport is None:
        channel.requests = []


def take_over(transport: Any, factory: Factory, data: bytes) -> bool:
    """Give ``transport`` and its first read ``data`` to a new protocol of ``factory`` (False: the factory built
    none), as Autobahn's ``WebSocketResource.render`` does after twisted.web's parse."""
    protocol = factory.buildProtocol(transport.getPeer())
    if protocol is None:
        return False
    if isinstance(transport, ProtocolWrapper):  # TLS
        transport.wrappedProtocol = protocol
    elif isinstance(getattr(transport, "protocol", None), ProtocolWrapper):
        transport.protocol.wrappedProtocol = protocol
    else:
        transport.protocol = protocol
    protocol.makeConnection(transport)
    protocol.dataReceived(data)
    return True


class StrictLineChannel(HTTPChannel):
    """twisted.web's HTTP channel, answering ``400 Bad Request`` (twisted.web's own answer to a malformed line) and
    closing as soon as the request line or header line being read holds a bare LF, or a CR followed by anything
    but LF. twisted.web ends a line at CRLF only and refuses a line holding CR or LF (its request-line and field
    checks, RFC 9110 §5.5), but only once a CRLF ends it: a request whose lines end in bare LF was held until the
    listener's deadline, then answered 408. RFC 9112 §2.2 lets a recipient take a bare LF as a line end or not;
    wsgw does not (one line grammar for its upgrade fast path ``wsgw.web.upgrade``, twisted.web and Autobahn,
    nothing a proxy in front might split differently), and now says so at once. A body is never looked at."""

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if self.line_mode and not self._busyReceiving and not self.paused:  # (the line being read: self._buffer)
            line, transport = self._buffer, self.transport
            if (b"\n" in line or b"\r" in line[:-1]) and not getattr(transport, "disconnecting", True):
                self._respondToBadRequestAndDisconnect()


def http_channel(factory: Any) -> Any:
    """A new channel of ``factory`` (a twisted.web ``Site``) as ``HTTPFactory.protocol`` builds one, but a
    ``StrictLineChannel``: set it as the Site's ``protocol``."""
    return _GenericHTTPChannelProtocol(StrictLineChannel())


def clear_exit_signal(reactor: Any) -> None:
    """Forget the signal that stopped ``reactor``, so twistd exits 0 after a designed shutdown."""
    if getattr(reactor, "_exitSignal", None) is not None:
        reactor._exitSignal = None


def tcp_listen_address(endpoint: Any) -> tuple[str, int, int] | None:
    """``(interface, port, backlog)`` of a parsed ``tcp:``, ``tcp6:`` or ``ssl:`` server endpoint; None for another
    kind (``unix:``, ``systemd:``...)."""
    from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint, TCP6ServerEndpoint

    if not isinstance(endpoint, (TCP4ServerEndpoint, TCP6ServerEndpoint, SSL4ServerEndpoint)):
        return None
    return endpoint._interface, endpoint._port, endpoint._backlog


def tls_context_factory(endpoint: Any) -> Any:
    """The TLS context factory (``IOpenSSLServerConnectionCreator``) of a parsed ``ssl:`` server endpoint."""
    return endpoint._sslContextFactory


# -- reads without the legacy log context (issue 13, goal 2) ------------------------------------------------------


_DIRECT = "_wsgw_direct_reads"


def read_directly(reactor: Any, transport: Any, protocol: Any = None) -> bool:
    """Have ``reactor`` read ``transport`` without ``log.callWithLogger`` when its descriptor is only readable
    (see the module docstring), handing what it reads to ``protocol.dataReceived`` itself when ``protocol`` is
    given: the protocol the transport's reads end at behind the wrappers that only forward them (a client
    endpoint's ``_WrappingProtocol``, ``ClientService``'s proxy); else ``transport.doRead()``. False, doing
    nothing, unless ``reactor`` is Twisted's own epoll reactor (its iteration ``EPollReactor.doPoll``) and
    ``transport`` a plain TCP or UNIX connection. Undone by ``stop_reading_directly`` (call it from the
    protocol's ``connectionLost``)."""
    from twisted.internet.epollreactor import EPollReactor

    if not isinstance(reactor, EPollReactor) or type(reactor).doIteration is not EPollReactor.doPoll:
        return False
    if not isinstance(transport, tcp.Connection) or getattr(transport, "TLS", False):
        return False
    direct = reactor.__dict__.get(_DIRECT)
    if direct is None:
        direct = {}
        setattr(reactor, _DIRECT, direct)
        setattr(reactor, "doIteration", functools.partial(poll, reactor, direct))  # noqa: B010 - an instance attribute
    if protocol is not None and _behind_forwarders(transport) is not protocol:
        protocol = None  # not (only) behind wrappers known to forward its reads: the transport's own read
    direct[transport] = transport.doRead if protocol is None else functools.partial(recv, transport,
                                                                                     protocol.dataReceived)
    return True


def _behind_forwarders(transport: Any) -> Any:
    """The protocol ``transport``'s reads end at through a client endpoint's ``_WrappingProtocol`` and
    ``ClientService``'s proxy, which forward ``dataReceived`` unchanged."""
    from twisted.application._client_service import _ReconnectingProtocolProxy
    from twisted.internet.endpoints import _WrappingProtocol

    protocol = transport.protocol
    while True:
        if type(protocol) is _WrappingProtocol:
            protocol = protocol._wrappedProtocol
        elif type(protocol) is _ReconnectingProtocolProxy:
            protocol = protocol._protocol
        else:
            return protocol


def stop_reading_directly(reactor: Any, transport: Any) -> None:
    """Forget ``transport`` (``read_directly``); its reactor keeps the copy of ``doPoll``, which then does what
    Twisted's does."""
    direct = getattr(reactor, "__dict__", {}).get(_DIRECT)
    if direct is not None:
        direct.pop(transport, None)


def run_natively(reactor: Any) -> bool:
    """Have ``reactor.run()`` iterate with ``wsgw.internals.loop.main_loop`` (the module docstring): call it before
    the reactor runs. False, doing nothing, unless ``reactor`` is Twisted's epoll reactor, not running, with
    ``ReactorBase``'s own ``mainLoop``, ``runUntilCurrent`` and ``timeout``."""
    from twisted.internet import base
    from twisted.internet.epollreactor import EPollReactor

    cls = type(reactor)
    if not isinstance(reactor, EPollReactor) or reactor.running or (
            cls.mainLoop, cls.runUntilCurrent, cls.timeout) != (
            base.ReactorBase.mainLoop, base.ReactorBase.runUntilCurrent, base.ReactorBase.timeout):
        return False
    terminated = functools.partial(base._log.info, "Main loop terminated.")
    setattr(reactor, "mainLoop", functools.partial(main_loop, reactor, base._topHandler, terminated))  # noqa: B010
    return True
