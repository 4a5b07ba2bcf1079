"""A TCP relay on loopback that ends each upstream connection with a FIN, whatever the client did.

A client that aborts its connection (an RST: txredisapi on a reply timeout) drops
the commands the server has not read yet when they meet directly; through most
proxies, or across a partition the RST never crosses, the server still reads and
runs them later. This relay is that proxy:

    relay = await Relay.start(upstream_port)   # relay.endpoint: "tcp:127.0.0.1:<port>"
    ...
    await relay.stop()
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol


class _Upstream(Protocol):
    def __init__(self, downstream: _Downstream) -> None:
        self.downstream = downstream

    def dataReceived(self, data: bytes) -> None:
        if not self.downstream.gone:
            self.downstream.transport.write(data)  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        if not self.downstream.gone:
            self.downstream.transport.loseConnection()  # type: ignore[union-attr]


class _Downstream(Protocol):
    def __init__(self, relay: Relay) -> None:
        self._relay = relay
        self._pending: list[bytes] = []
        self._upstream: _Upstream | None = None
        self.gone = False

    def connectionMade(self) -> None:
        self._relay.downstreams.add(self)
        d = connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self._relay.upstream_port), _Upstream(self))
        d.addCallbacks(self._up, lambda _: self.transport.abortConnection())  # type: ignore[union-attr]

    def _up(self, upstream: _Upstream) -> None:
        self._upstream = upstream
        for data in self._pending:
            upstream.transport.write(data)  # type: ignore[union-attr]
        self._pending = []
        if self.gone:
            upstream.transport.loseConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        if self._upstream is None:
            self._pending.append(data)
        else:
            self._upstream.transport.write(data)  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        self._relay.downstreams.discard(self)
        self.gone = True
        if self._upstream is not None:
            self._upstream.transport.loseConnection()  # type: ignore[union-attr]  # a FIN, after the data


class Relay:
    """Listens on 127.0.0.1 (an ephemeral port) and relays each connection to ``upstream_port``."""

    def __init__(self, upstream_port: int, port: IListeningPort) -> None:
        self.upstream_port = upstream_port
        self.port = port
        self.downstreams: set[_Downstream] = set()

    @classmethod
    async def start(cls, upstream_port: int) -> Relay:
        factory = Factory()
        relay = cls(upstream_port, None)  # type: ignore[arg-type]
        factory.protocol = lambda: _Downstream(relay)  # type: ignore[assignment,misc]
        relay.port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        return relay

    @property
    def endpoint(self) -> str:
        return f"tcp:127.0.0.1:{self.port.getHost().port}"  # type: ignore[attr-defined]

    def stop(self) -> Deferred[None]:
        for downstream in list(self.downstreams):
            downstream.transport.abortConnection()  # type: ignore[union-attr]
        return self.port.stopListening()  # type: ignore[return-value]
