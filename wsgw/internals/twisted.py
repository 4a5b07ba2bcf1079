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
- ``SSL4ServerEndpoint._sslContextFactory``: the TLS context factory an
  ``ssl:`` endpoint string describes; a worker (wsgw/workers/child.py) wraps
  the listening socket it inherited with it, as the endpoint's own listen would.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import tcp
from twisted.internet.protocol import Factory
from twisted.protocols.policies import ProtocolWrapper


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
