"""Autobahn protocols for /ws and /chat: translate frames into calls on the gateway core, nothing more."""

from __future__ import annotations

import json
from collections import Counter
from types import MappingProxyType
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from wsgw import frames
from wsgw.gateway import CLOSE_BAD_DATA, CLOSE_FLOOD, CLOSE_SLOW, CLOSE_TOO_BIG, Gateway
from wsgw.interfaces import IConnection
from wsgw.pacing import TokenBucket
from wsgw.sessions import Session
from wsgw.web.inbound import InboundPolicy, PeerCounts
from wsgw.web.outbound import FrameCache, Outbound, frame_header

__all__ = ["GatewayFactory", "GatewayProtocol", "frame_header"]

_OPEN = WebSocketServerProtocol.STATE_OPEN

# What Autobahn keeps on each protocol after the opening handshake but reads only during it (request and
# response text, parsed headers, handshake-only options): dropped at open, ~3 KB per idle socket (bench/RESULTS.md).
_HANDSHAKE_ONLY = (
    "http_headers", "http_request_data", "http_response_data", "http_status_line", "http_request_params",
    "http_request_host", "http_request_uri", "http_request_path", "_wskey", "websocket_protocols",
    "websocket_origin", "websocket_extensions", "flashSocketPolicy", "versions", "allowedOrigins",
    "allowedOriginsPatterns", "perMessageCompressionAccept", "webStatus", "trustXForwardedFor", "maxConnections",
)


@implementer(IConnection)
class GatewayProtocol(WebSocketServerProtocol):
    """One client socket. Outgoing frames are framed once per payload and go out through ``Outbound``."""

    _log = Logger()
    factory: GatewayFactory
    _session: Session | None = None
    _counted_host: str | None = None
    _flood: TokenBucket | None = None
    _out: Outbound | None = None
    # class-level stand-ins for the handshake-only attributes dropped at open (see _shed_handshake_state)
    http_headers: Any = MappingProxyType({})
    http_request_params: Any = MappingProxyType({})
    http_request_data = b""
    http_response_data = http_status_line = http_request_host = http_request_uri = http_request_path = ""
    websocket_origin: Any = None
    websocket_protocols: Any = ()
    websocket_extensions: Any = ()

    def onConnect(self, request: ConnectionRequest) -> None:
        factory = self.factory
        policy = factory.policy
        if not policy.origin_allowed(request.headers.get("origin")):
            factory.refused["origin"] += 1
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "origin not allowed")
        host = self.transport.getPeer().host  # type: ignore[union-attr]
        if not factory.peers.acquire(host, policy.per_ip):
            factory.refused["per_ip"] += 1
            raise ConnectionDeny(429, "too many connections from this address")
        self._counted_host = host

    def onOpen(self) -> None:
        factory = self.factory
        if self.transport is not None:  # (protocols driven without a socket in tests have none)
            self._out = Outbound(self.transport, factory.max_queued_bytes, factory.max_queued_frames, self._too_slow)
            self._shed_handshake_state()
        self._flood = self.factory.policy.flood_bucket(self.factory.clock)
        self._session = self.factory.gateway.open(self, self.factory.endpoint)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session = self._session
        if session is None or self.state != _OPEN:
            return  # the server is closing this socket: what the client sends now is not acted on
        if self._flood is not None and not self._flood.take():
            self._reject(CLOSE_FLOOD, "too many frames: slow down")
            self._session = None  # whatever else it already sent is ignored
            self.factory.gateway.closed(session)
            return
        if isBinary:
            self._reject(CLOSE_BAD_DATA, "binary frames are not accepted: send JSON text frames")
            return
        try:
            frame = json.loads(payload)
        except (ValueError, RecursionError):
            self._reject(CLOSE_BAD_DATA, "the frame is not valid JSON")
            return
        if not isinstance(frame, dict):
            self._reject(CLOSE_BAD_DATA, "the frame is not a JSON object")
            return
        d = self.factory.gateway.receive(session, frame)
        if d is not None:
            d.addErrback(lambda f: self._log.failure("handling a frame of session {sid}", f, sid=session.sid))

    def _max_message_size_exceeded(self, msg_size: int, max_msg_size: int, reason: str) -> None:
        # Autobahn's hook for an inbound message over maxMessagePayloadSize: say why, then close 1009.
        self._reject(CLOSE_TOO_BIG, f"frame too big: the limit is {max_msg_size} bytes")

    def _reject(self, code: int, reason: str) -> None:
        self.send(frames.error(reason))
        self.close(code, reason)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._counted_host is not None:
            self.factory.peers.release(self._counted_host)
            self._counted_host = None
        if self._session is not None:
            self.factory.gateway.closed(self._session)
            self._session = None

    # -- IConnection ------------------------------------------------------

    def send(self, payload: bytes) -> None:
        if self.state == _OPEN and self._out is not None:
            self._out.write(self.factory.frames.frame(payload))

    def sendCloseFrame(self, code: int | None = None, reasonUtf8: bytes | None = None,
                       isReply: bool = False) -> None:
        # Every close frame (ours, or Autobahn's reply to the client's) goes after the frames given before it.
        if self._out is not None:
            self._out.flush()
        super().sendCloseFrame(code, reasonUtf8, isReply)

    def _shed_handshake_state(self) -> None:
        # Drop what only the handshake reads, then rebuild the instance dict: Python dicts never shrink, and
        # under 86 keys the table is half the size. Reads of a dropped name find the class default below.
        attrs = self.__dict__
        for name in _HANDSHAKE_ONLY:
            attrs.pop(name, None)
        self.__dict__ = dict(attrs)

    def _too_slow(self) -> None:
        # The outbound queue went past its limit (its frames are already dropped): close with 4008.
        self._log.warn("{peer} reads too slowly: closing it with 4008", peer=self.peer)
        self.close(CLOSE_SLOW, "client too slow")

    def abort(self) -> None:
        self.dropConnection(abort=True)

    def close(self, code: int, reason: str) -> None:
        # sendClose only lets applications use 1000 and 3000-4999; 1003/1009/1013 are ours to send too.
        if self.state == _OPEN:
            self.factory.gateway.closes[code] += 1
            # failedByMe makes Autobahn drop (not buffer, not deliver) any frame still arriving
            self.failedByMe = True
            self.sendCloseFrame(code, reason.encode("utf-8")[:123])


class GatewayFactory(WebSocketServerFactory):
    """The factory of one endpoint ("ws" or "chat"), sharing the gateway core."""

    protocol = GatewayProtocol  # type: ignore[assignment]

    def __init__(self, gateway: Gateway, endpoint: str, clock: IReactorTime, *, max_frame: int,
                 ping_interval: float, pong_timeout: float, policy: InboundPolicy | None = None,
                 peers: PeerCounts | None = None, max_queued_bytes: int = 4 << 20,
                 max_queued_frames: int = 10_000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.frames = FrameCache()  # one per endpoint: a fan-out frames each payload once
        self.max_queued_bytes = max_queued_bytes
        self.max_queued_frames = max_queued_frames
        self.gateway = gateway
        self.endpoint = endpoint
        self.clock = clock
        self.policy = policy or InboundPolicy()
        self.peers = peers or PeerCounts()
        self.refused: Counter[str] = Counter()
        self.setProtocolOptions(
            maxFramePayloadSize=max_frame,
            maxMessagePayloadSize=max_frame,
            autoPingInterval=ping_interval,
            autoPingTimeout=pong_timeout,
            failByDrop=False,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=5,
        )
