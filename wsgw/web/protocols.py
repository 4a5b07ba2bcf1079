"""Autobahn protocols for /ws and /chat: translate sockets and frames into calls on the gateway core, nothing more.

A factory serves one endpoint (``wsgw.interfaces.IEndpoint``); every socket's
session, subscribe, timers and closes are the gateway's. Inbound, before the
core: the Origin allow-list at the handshake (the listener's caps and handshake
deadline are ``wsgw.web.listener``'s, from accept: a protocol takes over its
socket's ``Ticket``), the flood limit, text JSON objects only (1003), the size
limit (1009). Outbound: frames are framed once per payload and go out through
``Outbound``, in the order and within the bounds of the session's
``wsgw.flow.Flow``, each socket's frames of one batch of bus messages in one
write (the factory's ``WriteBatch``). Ping and pong frames count toward the flood limit like any
frame, and a peer that pings without reading makes the server hold one pong,
not one per ping (RFC 6455 §5.5.3).
"""

from __future__ import annotations

from typing import Any

from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wsgw.frames import CLOSE_BAD_DATA, CLOSE_FLOOD, CLOSE_TOO_BIG, decode
from wsgw.gateway import Gateway
from wsgw.interfaces import IConnection, IEndpoint
from wsgw.internals.autobahn import ServerFactory, ServerProtocol
from wsgw.pacing import TokenBucket
from wsgw.sessions import Session
from wsgw.web.inbound import InboundPolicy
from wsgw.web.listener import ListenerGuard, Ticket
from wsgw.web.outbound import FrameCache, Outbound, WriteBatch
from wsgw.web.refusals import handshake_refusal

_OPEN = ServerProtocol.STATE_OPEN


@implementer(IConnection)
class GatewayProtocol(ServerProtocol):
    """One client socket."""

    _log = Logger()
    factory: GatewayFactory
    _session: Session | None = None
    _ticket: Ticket | None = None
    _flood: TokenBucket | None = None
    _out: Outbound | None = None

    def connectionMade(self) -> None:
        guard = self.factory.guard
        if guard is not None:  # the socket's ticket, from accept; released when the socket closes
            self._ticket = guard.ticket_of(self.transport)
            if self._ticket is not None:
                self._ticket.claim()
            elif not self.openHandshakeTimeout:  # type: ignore[has-type]  # not a socket the guard admitted: Autobahn's deadline, then
                self.openHandshakeTimeout = self.factory.handshake_timeout
        super().connectionMade()

    def onConnect(self, request: ConnectionRequest) -> None:
        if not self.factory.policy.origin_allowed(request.headers.get("origin")):
            if self.factory.guard is not None:
                self.factory.guard.refused["origin"] += 1
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "origin not allowed")
        if self._ticket is not None:
            self._ticket.opened()

    def failHandshake(self, reason: str, code: int = 400, responseHeaders: Any = None) -> None:
        # Autobahn's, answering a fixed text naming what was wrong instead of its reason, which quotes the request
        # (``wsgw.web.refusals``); its line in the log says the same.
        text, answer = handshake_refusal(reason, code, responseHeaders)
        self.wasNotCleanReason = text
        self.log.info("failing WebSocket opening handshake ('{reason}')", reason=text)
        self.sendData(answer)
        self.dropConnection(abort=False)

    def onOpen(self) -> None:
        factory = self.factory
        out = None
        if self.transport is not None:  # (protocols driven without a socket in tests have none)
            out = self._out = Outbound(self.transport, self.sendPong, factory.batch, factory.frames)
            self.shed_handshake_state()
        self._flood = factory.policy.flood_bucket(factory.clock)
        # the session's flow writes through the Outbound itself (what ``write`` does, without the calls between)
        self._session = factory.gateway.open(self, factory.endpoint, None if out is None else out.send)
        if out is not None:
            out.flow = self._session.flow

    def _admit(self) -> Session | None:
        """The session, if the frame just received may be acted on: not while the server is closing the
        socket, and not past the flood limit (then the socket is closed 4029 and dropped once the close frame is
        written, without waiting for the peer's answer: what the peer sends next is not read)."""
        session = self._session
        if session is None or self.state != _OPEN:
            return None  # the server is closing this socket: what the client sends now is not acted on
        if self._flood is not None and not self._flood.take():
            gateway = self.factory.gateway
            gateway.reject(session, CLOSE_FLOOD, "too many frames: slow down")
            self._session = None  # whatever else it already sent is ignored
            gateway.closed(session)
            if self.transport is not None:
                self.dropConnection(abort=False)
            return None
        return session

    def onPing(self, payload: bytes) -> None:
        if self._admit() is not None:
            if self._out is not None:
                self._out.pong(payload)
            else:
                self.sendPong(payload)

    def onPong(self, payload: bytes) -> None:
        self._admit()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session = self._admit()
        if session is None:
            return
        gateway = self.factory.gateway
        if isBinary:
            gateway.reject(session, CLOSE_BAD_DATA, "binary frames are not accepted: send JSON text frames")
            return
        try:
            frame = decode(payload)  # json.loads, faster
        except (ValueError, RecursionError):
            gateway.reject(session, CLOSE_BAD_DATA, "the frame is not valid JSON")
            return
        if not isinstance(frame, dict):
            gateway.reject(session, CLOSE_BAD_DATA, "the frame is not a JSON object")
            return
        d = gateway.receive(session, frame, len(payload))
        if d is not None:
            d.addErrback(lambda f: gateway.failed("handling a frame of session {sid}", f, sid=session.sid))

    def message_too_big(self, limit: int) -> None:
        session = self._session
        if session is None:
            super().message_too_big(limit)
        else:
            self.factory.gateway.reject(session, CLOSE_TOO_BIG, f"frame too big: the limit is {limit} bytes")

    def before_close_frame(self) -> None:
        # Every close frame (ours, or Autobahn's reply to the client's) goes after the frames given before it,
        # and nothing goes after it.
        if self._session is not None:
            self._session.flow.flush()
            self._session.flow.stop()
        if self._out is not None:
            self._out.flush_batch()
            self._out.closing()  # what the flow hands over from now on is not written (Autobahn: not STATE_OPEN)

    def dropConnection(self, abort: bool = False) -> None:
        if self._out is not None:
            self._out.closing()  # Autobahn: STATE_CLOSED
        super().dropConnection(abort)

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # type: ignore[override]
        if self._out is not None:
            self._out.closing()
        super().connectionLost(reason)
        if self._ticket is not None:
            self._ticket.release()
            self._ticket = None
        self._out = None  # (it holds this protocol's sendPong: a cycle otherwise)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._session is not None:
            self.factory.gateway.closed(self._session)
            self._session = None

    # -- IConnection ------------------------------------------------------

    def write(self, payload: bytes) -> None:
        if self._out is not None:
            self._out.send(payload)  # (nothing once the socket is not open: ``Outbound.closing``)

    def close(self, code: int, reason: str) -> bool:
        return self.start_close(code, reason)

    def abort(self) -> None:
        if self._out is not None:
            self._out.flush_batch()  # what was written before, as without a batch
        self.dropConnection(abort=True)


class GatewayFactory(ServerFactory):
    """The factory of one endpoint, sharing the gateway core."""

    protocol = GatewayProtocol  # type: ignore[assignment]

    def __init__(self, gateway: Gateway, endpoint: IEndpoint, reactor: Any, clock: IReactorTime, *, max_frame: int,
                 ping_interval: float, pong_timeout: float, policy: InboundPolicy | None = None,
                 guard: ListenerGuard | None = None, handshake_timeout: float = 10.0, batch: WriteBatch | None = None,
                 **kwargs: Any) -> None:
        super().__init__(reactor, clock, server=None, **kwargs)  # no Server header naming Autobahn's version
        self.frames = FrameCache()  # one per endpoint: a fan-out frames each payload once
        self.gateway = gateway
        self.endpoint = endpoint
        self.clock = clock
        self.policy = policy or InboundPolicy()
        self.guard = guard  # the public listener's, shared by both endpoints
        self.batch = batch  # the process's WriteBatch, shared by every socket (None: no batching)
        self.handshake_timeout = handshake_timeout
        # The guard's ticket bounds the handshake of each socket it admitted (from the claim, as Autobahn's timer
        # would): no second timer per socket where it is as short (a socket without a ticket gets Autobahn's).
        ticketed = guard is not None and 0 < guard.deadline <= handshake_timeout
        self.setProtocolOptions(
            maxFramePayloadSize=max_frame,
            maxMessagePayloadSize=max_frame,
            autoPingInterval=ping_interval,
            autoPingTimeout=pong_timeout,
            failByDrop=False,
            openHandshakeTimeout=0 if ticketed else handshake_timeout,
            closeHandshakeTimeout=5,
            autoPingRestartOnAnyTraffic=False,  # only a pong proves the client reads (a frame from it does not)
            versions=[13],  # RFC 6455 only (not draft 8); wsgw.web.site answers 426 before Autobahn sees it
            webStatus=False,  # a request without an upgrade gets 426, never Autobahn's version page
            allowNullOrigin=True,  # (setProtocolOptions' default refuses "null" 400): the allow-list decides
        )
