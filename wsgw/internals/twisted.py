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
  reactor's iteration run a copy of ``doPoll`` (pinned by the source's hash in
  tests) that calls a registered transport's ``doRead()`` itself when its
  descriptor is only readable, without ``log.callWithLogger`` (a log prefix
  call, two dict copies and six calls per read, only for the legacy
  ``log.msg`` context, which nothing on a bus read uses); a read that fails or
  ends the connection is handed to ``_doReadOrWrite``'s own handling inside
  that context, as before. Given the protocol behind a client endpoint's
  ``_WrappingProtocol`` and ``ClientService``'s proxy (which forward
  ``dataReceived`` unchanged), it reads as ``tcp.Connection.doRead`` does and
  hands the bytes to that protocol itself (three calls fewer per read).
- ``SSL4ServerEndpoint._sslContextFactory``: the TLS context factory an
  ``ssl:`` endpoint string describes; a worker (wsgw/workers/child.py) wraps
  the listening socket it inherited with it, as the endpoint's own listen would.
"""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable
from typing import Any

from twisted.internet import main, tcp
from twisted.internet.protocol import Factory
from twisted.protocols.policies import ProtocolWrapper
from twisted.python import failure, log

from wsgw.internals.direct import IOV_MAX as IOV_MAX  # (re-exported: their former home)
from wsgw.internals.direct import buffered as buffered
from wsgw.internals.direct import direct_socket as direct_socket
from wsgw.internals.direct import send_direct as send_direct
from wsgw.internals.direct import send_direct_many as send_direct_many


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
        setattr(reactor, "doIteration", functools.partial(_poll, reactor, direct))  # noqa: B010 - an instance attribute
    if protocol is not None and _behind_forwarders(transport) is not protocol:
        protocol = None  # not (only) behind wrappers known to forward its reads: the transport's own read
    direct[transport] = transport.doRead if protocol is None else functools.partial(_recv, transport,
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


def _poll(reactor: Any, direct: dict[Any, Callable[[], Any]], timeout: float | None) -> None:
    """``EPollReactor.doPoll`` (Twisted 26.10), the transports in ``direct`` read without the log context when
    only readable."""
    if timeout is None:
        timeout = -1  # Wait indefinitely.
    try:
        ready = reactor._poller.poll(timeout, len(reactor._selectables))
    except OSError as err:
        if err.errno == errno.EINTR:
            return
        raise
    _drdw = reactor._doReadOrWrite
    selectables = reactor._selectables
    for fd, event in ready:
        try:
            selectable = selectables[fd]
        except KeyError:
            pass
        else:
            read = direct.get(selectable) if event == _EPOLLIN else None
            if read is not None:
                _read(reactor, selectable, fd, event, read)
            else:
                log.callWithLogger(selectable, _drdw, selectable, fd, event)


_EPOLLIN = 1  # select.EPOLLIN
EWOULDBLOCK = errno.EWOULDBLOCK  # as twisted.internet.tcp (POSIX)


def _read(reactor: Any, selectable: Any, fd: int, event: int, read: Callable[[], Any]) -> None:
    """``_doReadOrWrite`` for a descriptor only readable, still open, whose read goes well; anything else (a
    closed descriptor, a read that ends the connection or raises) as ``_doReadOrWrite`` handles it, in the
    selectable's log context."""
    try:
        closed = selectable.fileno() == -1
    except BaseException:  # noqa: BLE001 - _doReadOrWrite meets it again, and handles it
        closed = True
    if closed:
        log.callWithLogger(selectable, reactor._doReadOrWrite, selectable, fd, event)
        return
    try:
        why = read()
    except BaseException:
        log.callWithLogger(selectable, _failed, reactor, selectable, failure.Failure())
        return
    if why:
        log.callWithLogger(selectable, reactor._disconnectSelectable, selectable, why, True)


def _recv(transport: Any, data_received: Callable[[bytes], object]) -> Any:
    """``tcp.Connection.doRead`` and ``_dataReceived`` (Twisted 26.10) with the bytes handed to ``data_received``."""
    try:
        data = transport.socket.recv(transport.bufferSize)
    except OSError as se:
        if se.args[0] == EWOULDBLOCK:
            return None
        return main.CONNECTION_LOST
    if not data:
        return main.CONNECTION_DONE
    data_received(data)
    return None


def _failed(reactor: Any, selectable: Any, reason: failure.Failure) -> None:
    """What ``_doReadOrWrite`` does when ``doRead`` raises: log it, then disconnect with the exception (as not in
    a read: ``_doReadOrWrite`` marks the read only once ``doRead`` returned)."""
    log.err(reason)
    reactor._disconnectSelectable(selectable, reason.value, False)
