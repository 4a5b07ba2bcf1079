"""What wsgw relies on inside Twisted, beyond its public API (pinned by tests/test_internals.py).

- ``twisted.internet.abstract.FileDescriptor`` keeps unwritten bytes in
  ``dataBuffer`` (from ``offset``) and ``_tempDataLen`` bytes in ``_tempData``;
  ``tcp.Connection`` holds its ``socket`` and says ``TLS`` when TLS is on.
  The outbound path sends on the socket directly while the transport holds
  nothing (bench/RESULTS.md: no epoll round trip per frame), a batch of frames
  with one ``sendmsg()``.
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
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import main, tcp
from twisted.internet.protocol import Factory
from twisted.protocols.policies import ProtocolWrapper
from twisted.python import failure, log


def buffered(transport: Any) -> int:
    """Bytes a Twisted ``FileDescriptor`` holds and has not written yet."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen  # type: ignore[no-any-return]


def direct_socket(transport: Any) -> socket.socket | None:
    """The transport's socket when frames may be sent on it directly (plain TCP), else None (TLS, tests)."""
    if isinstance(transport, tcp.Connection) and not getattr(transport, "TLS", False):
        sock = getattr(transport, "socket", None)
        try:
            buffered(transport)
        except (AttributeError, TypeError):
            return None  # not the FileDescriptor this module knows: go through transport.write
        if isinstance(sock, socket.socket):
            return sock
    return None


def send_direct(transport: Any, sock: socket.socket, data: bytes) -> int:
    """Send ``data`` on ``sock`` (from ``direct_socket(transport)``) if the transport holds nothing, so bytes
    never overtake what it buffered; returns how many the kernel took (0 when none, or when it must wait)."""
    if transport._tempDataLen or transport.dataBuffer:
        return 0
    try:
        return sock.send(data)
    except OSError:  # BlockingIOError included; a real error is met again by the transport, which closes properly
        return 0


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


IOV_MAX = 1024  # buffers one sendmsg() may gather (Linux, POSIX minimum 16: 1024 everywhere wsgw runs)


def send_direct_many(transport: Any, sock: socket.socket, frames: list[bytes]) -> int:
    """Send ``frames`` (at most ``IOV_MAX``), in order, with one ``sendmsg()`` (the kernel gathers them: no joined
    copy) if the transport holds nothing, as ``send_direct``; returns how many bytes the kernel took."""
    if transport._tempDataLen or transport.dataBuffer:
        return 0
    try:
        return sock.sendmsg(frames)
    except OSError:
        return 0


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
