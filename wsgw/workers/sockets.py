"""The listening sockets of ``[server] workers``: what each worker process is given for each ``[server] listen``.

- ``tcp:``, ``tcp6:`` and ``ssl:`` endpoints: one socket per worker, each
  bound to the endpoint's address with ``SO_REUSEPORT`` (Linux 3.9+): the kernel
  spreads incoming connections evenly over the workers' sockets (a hash of the
  connection's addresses and ports). An even spread matters for WebSockets: a
  connection stays for hours on the worker that accepted it. One socket shared
  by every worker was measured spreading them badly: with every worker waiting
  in epoll, the first one woken accepts everything queued (Twisted accepts in
  a loop), and 24 clients connecting at once all landed on one of two workers
  in two runs of three. The address is first bound once without
  ``SO_REUSEPORT`` and released, so an address in use (another daemon, even a
  second wsgw started by mistake) fails at start with the same one line as a
  single process (``ListenFailed``), instead of silently sharing the port.
  A worker's sockets are the worker's: when it ends they close (connections
  queued on them and not yet accepted are reset), the kernel spreads new
  connections over the others, and its next start binds new ones.
- ``unix:``, ``systemd:`` and any other endpoint: bound once by the supervisor
  (its Twisted endpoint, as a single process binds it), never accepted on
  there, and the same socket handed to every worker; connections then go to
  whichever worker is idle first (unevenly, as above): prefer ``tcp:``
  endpoints with workers.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.abstract import isIPv6Address
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol

from wsgw.internals.twisted import tcp_listen_address
from wsgw.service import SETTINGS, ListenFailed, address_of, bind

LISTENER = "public listener"


class _NoAccept(Factory):
    """The factory of the supervisor's shared listening sockets, which it never accepts on."""

    noisy = False
    protocol = Protocol


class Listener:
    """One ``[server] listen`` endpoint of the supervisor; ListenFailed (one line) when its address is in use."""

    def __init__(self, reactor: Any, description: str) -> None:
        endpoint = serverFromString(reactor, description)
        found = tcp_listen_address(endpoint)
        self._shared: IListeningPort | None = None
        if found is None:
            self._shared = bind(endpoint, _NoAccept(), LISTENER)
            self._shared.stopReading()  # type: ignore[attr-defined]  # the workers accept, never the supervisor
            self.address = address_of(self._shared)
            return
        interface, port, self._backlog = found
        self._family = socket.AF_INET6 if isIPv6Address(interface) else socket.AF_INET
        with self._socket(reuse_port=False) as probe:  # fails if anything holds the address, SO_REUSEPORT or not
            try:
                probe.bind((interface, port))
            except OSError as e:
                raise ListenFailed(f"cannot listen on {interface or '*'}:{port} ({LISTENER}, {SETTINGS[LISTENER]}): "
                                   f"{e.strerror or e}") from None
            self._address = (interface, probe.getsockname()[1])  # port 0: the port chosen, for every worker
        self.address = f"{interface}:{self._address[1]}"

    @property
    def per_worker(self) -> bool:
        """Whether each worker gets a socket of its own (``SO_REUSEPORT``), not the shared one."""
        return self._shared is None

    def _socket(self, reuse_port: bool) -> socket.socket:
        sock = socket.socket(self._family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted's listening ports
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        return sock

    def for_worker(self) -> tuple[int, socket.socket | None]:
        """``(fd, own)``: the listening socket to hand a worker about to start, and when it is the worker's own
        socket, that socket (close it once the worker started: the worker holds it). OSError when it cannot be
        bound (then nothing is left open)."""
        if self._shared is not None:
            return self._shared.fileno(), None  # type: ignore[attr-defined]
        sock = self._socket(reuse_port=True)
        try:
            sock.bind(self._address)
            sock.listen(self._backlog)
            sock.setblocking(False)  # reactor.adoptStreamPort wants a non-blocking socket
        except OSError:
            sock.close()
            raise
        return sock.fileno(), sock

    def close(self) -> Any:
        """Close the supervisor's copy (a shared socket); the workers close theirs as they stop."""
        return None if self._shared is None else self._shared.stopListening()
