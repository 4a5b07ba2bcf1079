"""Sockets that record what the server sends on them (the Outbound's own socket: compiled or not, every direct
send goes through it)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class CountingSocket(socket.socket):
    """A duplicate of a server socket's descriptor that records each system call that sends: ``(how, frames)``;
    ``take(data)``, if given, is what of ``data`` one ``send`` offers the kernel (a partial send, made to order)."""

    def __init__(self, sock: socket.socket, sends: list[tuple[str, int]],
                 take: Callable[[bytes], bytes] | None = None) -> None:
        super().__init__(sock.family, sock.type, sock.proto, fileno=os.dup(sock.fileno()))
        self.sends = sends
        self.take = take

    def send(self, data: Any, *args: Any) -> int:
        self.sends.append(("send", 1))
        return super().send(data if self.take is None else self.take(bytes(data)), *args)

    def sendmsg(self, buffers: Any, *args: Any) -> int:  # type: ignore[override]
        self.sends.append(("sendmsg", len(buffers)))
        return super().sendmsg(buffers, *args)


@contextmanager
def counting_sends(daemon: Any) -> Iterator[list[tuple[str, int]]]:
    """Every open socket of ``daemon`` sends through a ``CountingSocket`` (the Outbound's own socket: compiled or
    not, every direct send goes through it); yields the ``(how, frames)`` of each system call, in order."""
    sends: list[tuple[str, int]] = []
    swapped = []
    for session in list(daemon.service.gateway.table):
        out = session.connection._out
        swapped.append((out, out._sock))
        out._sock = CountingSocket(out._sock, sends)
    try:
        yield sends
    finally:
        for out, sock in swapped:
            out._sock.close()
            out._sock = sock
