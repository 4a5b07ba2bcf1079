"""Sending on a Twisted TCP transport's socket directly, when it holds nothing (pinned by tests/test_internals.py).

``twisted.internet.abstract.FileDescriptor`` keeps unwritten bytes in
``dataBuffer`` (from ``offset``) and ``_tempDataLen`` bytes in ``_tempData``;
``tcp.Connection`` holds its ``socket``, says ``TLS`` when TLS is on, and ``disconnecting`` (``FileDescriptor``) or
``_aborting`` once ``loseConnection`` or ``abortConnection`` was called. The
outbound path (``wsgw.web.outbound``) and Autobahn's handshake answer
(``wsgw.internals.autobahn``) send on the socket directly while the transport
holds nothing (bench/RESULTS.md: no epoll round trip per frame), a batch of
frames with one ``sendmsg()``; bytes never overtake what the transport holds.

Compiled by mypyc (``setup.py`` ``COMPILED``): ``send_direct`` runs once per
delivery, called natively from the compiled outbound path.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import tcp

IOV_MAX = 1024  # buffers one sendmsg() may gather (Linux, POSIX minimum 16: 1024 everywhere wsgw runs)


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
    """Send ``data`` on ``sock`` (from ``direct_socket(transport)``) if the transport holds nothing and is not
    closing (``loseConnection`` or ``abortConnection`` called), so bytes never overtake what it buffered nor go
    where Twisted's ``write`` would not send them (a disconnecting transport writes what it is given, then closes; an
    aborting one nothing more); returns how many the kernel took (0 when none, when it must wait, or when the
    transport is closing: the caller gives the rest to ``transport.write``, and Twisted decides)."""
    if transport._tempDataLen or transport.dataBuffer or transport.disconnecting or transport._aborting:
        return 0
    try:
        return sock.send(data)
    except OSError:  # BlockingIOError included; a real error is met again by the transport, which closes properly
        return 0


def send_direct_many(transport: Any, sock: socket.socket, frames: list[bytes]) -> int:
    """Send ``frames`` (at most ``IOV_MAX``), in order, with one ``sendmsg()`` (the kernel gathers them: no joined
    copy) if the transport holds nothing and is not closing, as ``send_direct``; returns how many bytes the
    kernel took."""
    if transport._tempDataLen or transport.dataBuffer or transport.disconnecting or transport._aborting:
        return 0
    try:
        return sock.sendmsg(frames)
    except OSError:
        return 0
