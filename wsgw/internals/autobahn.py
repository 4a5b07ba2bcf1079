"""What wsgw relies on inside Autobahn, beyond its public API (pinned by tests/test_internals.py).

``ServerProtocol`` and ``ServerFactory`` are Autobahn's Twisted server classes
with the few private hooks wsgw needs, exposed under names of its own:

- ``_max_message_size_exceeded(msg_size, max_msg_size, reason)``, Autobahn's
  hook for an inbound message over ``maxMessagePayloadSize``: becomes
  ``message_too_big(limit)``, so the client is told why before 1009;
- ``sendCloseFrame``, through which every close frame goes (ours and Autobahn's
  replies): ``before_close_frame()`` runs first, so frames given before a close
  go out before it;
- ``sendData``, through which Autobahn writes its handshake answer (``STATE_CONNECTING``) and, on an open
  socket, its own frames (the keepalive pings every ``autoPingInterval``, its pongs and close frames; wsgw's
  frames go through ``wsgw.web.outbound``): sent on the socket directly when the transport holds nothing
  (``wsgw.internals.twisted.send_direct``: no write buffer, epoll registration and reactor turn per ping,
  ~15 us of the ~63 us a ping and its pong cost, bench/RESULTS.md "Idle cost at N = 10,000"), the wire-level
  counts of ``trafficStats`` kept as Autobahn's;
- ``_dataReceived(data)``, Autobahn's entry for every read; ``processControlFrame()``, which handles a complete
  control frame found in ``control_frame_data`` (its payload's pieces) and ``current_frame``; ``_onMessage``, to
  which its parser hands a complete message: a read that is one whole pong goes to the second directly, one whole
  text message to the third, with ``trafficStats`` counted as Autobahn's parser counts them;
- ``_onOpen``, which Autobahn calls when the handshake completes: from then on the socket is read without
  Twisted's legacy log context (``wsgw.internals.twisted.read_directly``), until ``connectionLost``;
- ``autoPingInterval``, which Autobahn reads when the handshake completes to schedule the first keepalive ping,
  then after each pong for the next: ``_connectionMade`` gives the socket its own, a random point of the
  interval's second half, and ``_onOpen`` removes it (the option's again). Sockets opened together, a connect
  storm, would otherwise all be pinged together every interval, a burst of CPU that holds up events (10,000
  pings, ~0.5 s: bench/RESULTS.md "Idle cost at N = 10,000"); no ping comes later than the interval;
- ``failedByMe``: set when the server starts a close, Autobahn then drops (does
  not buffer, does not deliver) every frame still arriving;
- ``dropConnection(abort=False)``, which Autobahn calls after replying to a
  peer's close frame: it waits for the transport to flush, forever if the peer
  does not read; ``ServerProtocol`` aborts such a connection ``closeHandshakeTimeout``
  seconds later (the socket, its buffers and its session are then released);
- ``is_open`` and ``is_closed``, Autobahn's Deferreds (the second fired with the protocol itself: a reference
  cycle): dropped when the connection is lost, so that reference counting alone frees a closed protocol;
- ``data``, Autobahn's receive buffer: once the connection is dropped nothing
  more in it is processed, yet it holds the rest of the last read (up to
  64 KiB, e.g. the pings behind a 4029) for as long as the closed protocol
  lives, which is until a garbage collection (it sits in reference cycles):
  ``ServerProtocol`` empties it at the end of the read that dropped the connection (not in the middle:
  Autobahn drops at a frame's second protocol violation, then reads on in that frame's header), or when lost;
- the handshake-only attributes (``HANDSHAKE_ONLY``), read only during the
  opening handshake, are dropped at open and the instance dict rebuilt
  (bench/RESULTS.md: ~3 KB per idle socket); class-level stand-ins answer the
  rare read of one afterwards. So are the state attributes still at their default
  (``IDLE_DEFAULTS``: the class attribute answers until Autobahn sets one
  again); Autobahn's ``send_queue``, an empty ``deque`` (760 bytes) on an idle
  socket, becomes a list with ``popleft`` (the only calls Autobahn makes on it:
  ``append``, ``popleft``, ``len``); the transport's instance dict, grown by its
  first writes, is rebuilt too (bench/RESULTS.md, "Memory and GC");
- ``CONFIG_ATTRS``: Autobahn copies each of the factory's options onto each
  socket (about 30 attributes) unless the protocol already has it
  (``hasattr``); ``ServerFactory.setProtocolOptions`` makes its protocol a
  subclass holding the options as class attributes, so no socket holds a copy
  and reading one costs what reading a copy did;
- ``factory._batched_timer``: Autobahn's handshake, ping and close timers run on
  txaio's global loop; ``ServerFactory`` gives them a txaio ``_BatchedTimer``
  (Autobahn's own kind, bucket and chunk) on the injected clock, whose
  ``call_later`` rounds up to the bucket instead of truncating to the second
  (txaio computes ``int(now + delay) * 1000``: a delay under a second fires at
  once, so a 0.5 s ping interval pinged thousands of times a second);
- debug arguments: Autobahn computes the arguments of its debug lines before calling ``log.debug``, which
  is a no-op unless Autobahn's log level is debug (never, in wsgw): ``_connectionMade`` pretty-prints the
  ~40 options of every new socket (``pformat``, ~19 % of a connect storm's CPU, bench/RESULTS.md "Connect
  path") and ``hltype``/``hlval`` (a qualified name through ``inspect`` and ``click.style``) run on every
  connect, handshake and read. ``lazy_debug_arguments`` makes ``hltype`` and ``hlval`` in Autobahn's two
  WebSocket modules return a ``Lazy`` value, formatted only if a log observer formats the line (every use
  there is a keyword argument of a ``self.log`` call, which tests/test_internals_connect.py checks), and
  ``ServerProtocol._connectionMade`` lends ``pformat`` the same laziness for the time of Autobahn's own
  (``Timings.__str__`` in that module must keep returning a ``str``), and with debug off hides ``CONFIG_ATTRS``
  for that time, so Autobahn's loop copying the options (none: ``CONFIG_ATTRS`` above) does not run;
- ``Utf8Validator``: ``_connectionMade`` gives each socket one (a cffi object, ~400 bytes with its dict and C
  state), used only when Autobahn's parser reads a text message (rare: ``_dataReceived`` validates whole ones
  itself); the socket's is made at that first use (``LazyValidator``, a class attribute), none at connect;
- ``log``, each protocol's txaio logger: ``ServerFactory`` gives its sockets a ``BudgetedLog``, so the info,
  warn and error lines Autobahn writes about one socket (a refused handshake, a dropped connection, a ping
  timeout, a protocol error, an unsolicited pong) stay within the daemon's ``wsgw.logs.LineBudget``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from random import random
from types import FunctionType, MappingProxyType
from typing import Any

import autobahn.twisted.websocket
import autobahn.websocket.protocol
from autobahn import util as autobahn_util
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import FrameHeader
from twisted.internet.interfaces import IReactorTime
from txaio import _common as txaio_common
from txaio.tx import _no_op as _NO_OP  # what a txaio logger's method is when its level is off

from wsgw.internals.twisted import direct_socket, read_directly, send_direct, stop_reading_directly
from wsgw.internals.wholeframe import unmask, whole_text
from wsgw.logs import BudgetedLog, LineBudget

HANDSHAKE_ONLY = (
    "http_headers", "http_request_data", "http_response_data", "http_status_line", "http_request_params",
    "http_request_host", "http_request_uri", "http_request_path", "_wskey", "websocket_protocols",
    "websocket_origin", "websocket_extensions",
)
# Autobahn's state attributes and the value each holds on an idle open socket (immutable values only)
IDLE_DEFAULTS: dict[str, Any] = dict.fromkeys((
    "_perMessageCompress", "trackedTimings", "wasNotCleanReason", "localCloseCode", "localCloseReason",
    "remoteCloseCode", "remoteCloseReason", "openHandshakeTimeoutCall", "closeHandshakeTimeoutCall",
    "autoPingTimeoutCall", "autoPingPending", "autoPingPendingSent", "websocket_protocol_in_use", "current_frame",
    "message_data", "frame_data",
), None) | dict.fromkeys((
    "triggered", "wasMaxFramePayloadSizeExceeded", "wasMaxMessagePayloadSizeExceeded", "closedByMe", "failedByMe",
    "droppedByMe", "wasClean", "wasServerConnectionDropTimeout", "wasOpenHandshakeTimeout",
    "wasCloseHandshakeTimeout", "wasServingFlashSocketPolicyFile", "inside_message", "_isMessageCompressed",
    "message_is_binary", "utf8validateIncomingCurrentMessage",
), False) | dict.fromkeys(("message_data_total_length", "frame_length"), 0)
_HANDSHAKE_ONLY = frozenset(HANDSHAKE_ONLY)
_IDLE_DEFAULT = IDLE_DEFAULTS.get
_KEPT = object()  # (no attribute's value: kept)
_CONNECTING = WebSocketServerProtocol.STATE_CONNECTING
_OPEN = WebSocketServerProtocol.STATE_OPEN
_CLOSED = WebSocketServerProtocol.STATE_CLOSED
_PONG = FrameHeader(10, True, 0, 0, None)  # type: ignore[arg-type]  # (what processControlFrame reads of a frame: its opcode)
_BATCH_MILLISECONDS = 200.0  # Autobahn's own bucket and chunk for its batched timers
_BATCH_CHUNK = 1000


class Lazy(functools.partial):  # type: ignore[type-arg]
    """``fn(*args)``, computed when formatted (``str``, ``format``, ``repr``): a log line's argument that costs
    nothing when the line is dropped unwritten. A ``functools.partial``: built in C, no Python frame."""

    __slots__ = ()

    def __str__(self) -> str:
        return str(self())

    def __format__(self, spec: str) -> str:
        return format(self(), spec)

    def __repr__(self) -> str:
        return repr(self())


def _lazy(fn: Callable[..., Any]) -> Callable[..., Lazy]:
    return functools.partial(Lazy, fn)


_LAZY_MODULES = (autobahn.websocket.protocol, autobahn.twisted.websocket)
_PFORMAT = autobahn.websocket.protocol.pformat  # type: ignore[attr-defined]
_lazy_pformat = _lazy(_PFORMAT)


def lazy_debug_arguments() -> None:
    """Make ``hltype`` and ``hlval`` lazy in Autobahn's WebSocket modules (see the module docstring); idempotent.
    Called when this module is imported."""
    for module in _LAZY_MODULES:
        module.hltype = _lazy(autobahn_util.hltype)  # type: ignore[attr-defined]
        module.hlval = _lazy(autobahn_util.hlval)  # type: ignore[attr-defined]


lazy_debug_arguments()


class LazyValidator:
    """``utf8validator`` of a socket that has none yet: Autobahn's validator, made at the first read and kept."""

    def __get__(self, protocol: Any, owner: Any = None) -> Any:
        if protocol is None:
            return self
        validator = protocol.__dict__["utf8validator"] = _UTF8_VALIDATOR()
        return validator


_UTF8_VALIDATOR = autobahn.websocket.protocol.Utf8Validator
_LAZY_VALIDATOR = LazyValidator()


def _no_validator_yet() -> LazyValidator:
    return _LAZY_VALIDATOR


class SendQueue(list):  # type: ignore[type-arg]
    """Autobahn's ``send_queue`` after the handshake: a list (56 bytes empty, a ``deque`` 760) with ``popleft``."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


class ServerProtocol(WebSocketServerProtocol):
    """Autobahn's Twisted server protocol with wsgw's hooks (see the module docstring)."""

    # class-level stand-ins for the handshake-only attributes dropped at open
    http_headers: Any = MappingProxyType({})
    http_request_params: Any = MappingProxyType({})
    http_request_data = b""
    http_response_data = http_status_line = http_request_host = http_request_uri = http_request_path = ""
    websocket_origin: Any = None
    websocket_protocols: Any = ()
    websocket_extensions: Any = ()

    _linger: Any = None  # the abort scheduled by a graceful drop
    utf8validator: Any = _LAZY_VALIDATOR
    def message_too_big(self, limit: int) -> None:
        """An inbound message went over ``limit`` bytes; the default fails the connection with 1009."""
        WebSocketServerProtocol._max_message_size_exceeded(self, limit + 1, limit, "message too big")

    def before_close_frame(self) -> None:
        """Called before every close frame this socket sends."""

    def start_close(self, code: int, reason: str) -> bool:
        """Send a close frame with any code (``sendClose`` allows only 1000 and 3000-4999) and drop the frames
        still arriving; returns False when the socket is not open."""
        if self.state != WebSocketServerProtocol.STATE_OPEN:
            return False
        self.failedByMe = True
        # at most 123 bytes (RFC 6455 §5.5: a control frame's payload is at most 125), cut on a character boundary
        self.sendCloseFrame(code, reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8"))
        return True

    def shed_handshake_state(self) -> None:
        """Drop what only the handshake reads and the state still at its default, then rebuild the instance
        dict: Python dicts never shrink, and under 43 keys the table is a quarter of the size. The transport's
        dict is rebuilt too."""
        # one pass building the new dict (the same size as a copy of the old one, less the names dropped)
        attrs = {name: value for name, value in self.__dict__.items()
                 if name not in _HANDSHAKE_ONLY and _IDLE_DEFAULT(name, _KEPT) is not value}
        if not attrs.get("send_queue", True):  # (empty)
            attrs["send_queue"] = SendQueue()
        self.__dict__ = attrs
        transport = self.transport
        if transport is not None and hasattr(transport, "__dict__"):
            transport.__dict__ = dict(transport.__dict__)

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        # The opening handshake's answer (the 101, or a refusal before the close) and an open socket's pings onto
        # the socket at once when the transport holds nothing, as the outbound path sends frames: no write buffer,
        # no epoll registration and no reactor turn to write it (bench/RESULTS.md "Connect path", part 3, and
        # "Idle cost at N = 10,000"). Bytes the kernel does not take, and everything else, go Autobahn's way.
        state = self.state
        if (state == _OPEN or state == _CONNECTING) and not sync and not chopsize and not self.send_queue \
                and not self.logOctets:  # type: ignore[attr-defined]
            transport = self.transport
            sock = direct_socket(transport)
            if sock is not None and transport.connected:  # type: ignore[union-attr]  # (closing: send_direct's 0)
                sent = send_direct(transport, sock, data)
                if sent:
                    stats = self.trafficStats
                    if state == _OPEN:
                        stats.outgoingOctetsWireLevel += sent
                    else:
                        stats.preopenOutgoingOctetsWireLevel += sent
                    if sent == len(data):
                        return
                    data = data[sent:]
        super().sendData(data, sync, chopsize)

    # -- Autobahn's private hooks ------------------------------------------

    def _connectionMade(self) -> None:
        module: Any = autobahn.websocket.protocol
        module.pformat = _lazy_pformat  # its one call in there: the options of the debug line
        module.Utf8Validator = _no_validator_yet  # (and its validator: made at the first use, LazyValidator)
        # With every option a class attribute (``setProtocolOptions``) Autobahn's loop over CONFIG_ATTRS copies
        # none: it only lists them for that line. With debug off (its line unwritten) it loops over nothing.
        skip = self.log.debug is _NO_OP and getattr(type(self), "_options_of", None) is self.factory
        interval = self.autoPingInterval  # type: ignore[has-type]
        if interval:  # this socket's first ping (Autobahn reads this when the handshake completes; see _onOpen)
            self.autoPingInterval = interval * (0.5 + 0.5 * random())
        if skip:
            self.CONFIG_ATTRS = []
        try:
            super()._connectionMade()
        finally:
            module.pformat = _PFORMAT
            module.Utf8Validator = _UTF8_VALIDATOR
            if skip:
                del self.CONFIG_ATTRS
        if self.__dict__.get("utf8validator") is _LAZY_VALIDATOR:
            del self.utf8validator  # (the class's LazyValidator answers)

    def dropConnection(self, abort: bool = False) -> None:
        super().dropConnection(abort)
        if not abort and self._linger is None and self.transport is not None:
            timeout: float = self.closeHandshakeTimeout  # type: ignore[attr-defined]  # (set by the factory's options)
            self._linger = self.factory._batched_timer.call_later(timeout, self._abort_lingering)

    def _abort_lingering(self) -> None:
        self._linger = None
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]  # (ITCPTransport's)

    def _dataReceived(self, data: bytes) -> None:
        # A read that is one whole masked pong (the keepalive's answer: most reads of an idle socket) or one whole
        # masked text message (the client's subscribe, its token: one per connect), on an open socket holding no
        # partial frame or message: unmasked here (``wsgw.internals.wholeframe``) and handed to what Autobahn's
        # parser would call at that frame's end (``processControlFrame``; ``_onMessage``), its counts kept, with
        # nothing Autobahn refuses in it; its per-frame objects (a masker, a frame header, a validator reset, five
        # calls per frame) not made. Any other read is Autobahn's (bench/RESULTS.md "Idle cost at N = 10,000";
        # "Connect path", part 5).
        first = data[0] if data else 0
        if (first == 0x8A or first == 0x81) and self.state == _OPEN and self.current_frame is None \
                and not self.data and self.applyMask and not self.logOctets and not self.logFrames:  # type: ignore[attr-defined]
            size = len(data) - 6
            if first == 0x8A and 0 <= size <= 125 and data[1] == 0x80 | size:  # (valid as it is: final, masked, short)
                self.trafficStats.incomingOctetsWireLevel += size + 6
                self.control_frame_data = [unmask(data, 6, size)]
                self.current_frame = _PONG
                try:
                    self.processControlFrame()
                finally:
                    self.current_frame = None
                return
            payload = None if (self.inside_message or self.failedByMe or self._listeners is not None
                               or self.trackedTimings or self._perMessageCompress is not None
                               or not self.utf8validateIncoming or self.websocket_version == 0) \
                else whole_text(data, self.maxFramePayloadSize, self.maxMessagePayloadSize)  # type: ignore[attr-defined]
            if payload is not None:  # (the counts of _dataReceived, onFrameData, onFrameEnd)
                stats, size = self.trafficStats, len(payload)
                stats.incomingOctetsWireLevel += len(data)
                stats.incomingOctetsWebSocketLevel += size
                stats.incomingOctetsAppLevel += size
                stats.incomingWebSocketFrames += 1
                if self.autoPingTimeoutCall and self.autoPingRestartOnAnyTraffic:  # type: ignore[attr-defined]
                    self._cancelAutoPingTimeoutCall()
                stats.incomingWebSocketMessages += 1
                self.inside_message = True  # (as while Autobahn's parser hands it over)
                self._onMessage(payload, False)  # (Autobahn's "message" event has no listener: nothing to fire)
                self.inside_message = False
                return
        super()._dataReceived(data)
        if self.state == _CLOSED:  # dropped: nothing more is processed, the rest of the read goes now (not at a gc)
            self.data = b""

    def _onOpen(self) -> None:
        # Once open, the socket is read without Twisted's legacy log context (``read_directly``; its reads are
        # mostly the pongs of the keepalive: bench/RESULTS.md "Idle cost at N = 10,000").
        read_directly(self.factory.reactor, self.transport)
        self.__dict__.pop("autoPingInterval", None)  # the pings after the first: every interval, the option's
        super()._onOpen()

    def connectionLost(self, reason: Any = None) -> None:
        stop_reading_directly(self.factory.reactor, self.transport)
        linger, self._linger = self._linger, None
        if linger is not None:
            linger.cancel()
        super().connectionLost(reason)
        self.data = b""
        # Autobahn fires ``is_closed`` with the protocol itself: the Deferred and the protocol would point at each
        # other until a full collection. Nothing reads either once the connection is lost.
        attrs = self.__dict__
        attrs.pop("is_closed", None)
        attrs.pop("is_open", None)

    def _max_message_size_exceeded(self, msg_size: int, max_msg_size: int, reason: str) -> None:
        self.message_too_big(max_msg_size)

    def sendCloseFrame(self, code: int | None = None, reasonUtf8: bytes | None = None,
                       isReply: bool = False) -> None:
        self.before_close_frame()
        super().sendCloseFrame(code, reasonUtf8, isReply)


class _BatchedTimer(txaio_common._BatchedTimer):
    """txaio's batched timer, each call in the first bucket at or after ``now + delay`` (never early)."""

    def call_later(self, delay: float, func: Any, *args: Any, **kwargs: Any) -> Any:
        now = self._get_seconds()
        bucket = self._bucket_milliseconds
        real_time = int(math.ceil((now + delay) * 1000.0 / bucket) * bucket)
        # (no closure for the usual call without arguments: a lambda and its cells are ~300 bytes per socket)
        call = txaio_common._BatchedCall(self, real_time, functools.partial(func, *args, **kwargs) if args or kwargs
                                         else func)
        if real_time in self._buckets:
            self._buckets[real_time][1].append(call)
        else:
            delayed = self._create_delayed_call(max(0.0, real_time / 1000.0 - now), self._notify_bucket, real_time)
            self._buckets[real_time] = (delayed, [call])
        return call


class ServerFactory(WebSocketServerFactory):
    """Autobahn's Twisted server factory on ``reactor``, its timers on ``clock`` (the same object in production);
    with a ``log_budget``, its sockets log through a ``BudgetedLog``."""

    def __init__(self, reactor: Any, clock: IReactorTime, log_budget: LineBudget | None = None,
                 **kwargs: Any) -> None:
        super().__init__(reactor=reactor, **kwargs)
        self._batched_timer = _BatchedTimer(_BATCH_MILLISECONDS, _BATCH_CHUNK, seconds_provider=clock.seconds,
                                            delayed_call_creator=clock.callLater)
        self._socket_log = None if log_budget is None else BudgetedLog(WebSocketServerProtocol.log, log_budget)

    def setProtocolOptions(self, **options: Any) -> None:  # type: ignore[override]
        """Autobahn's, then the protocol made a subclass holding every option as a class attribute (the module
        docstring: ``CONFIG_ATTRS``)."""
        super().setProtocolOptions(**options)
        base: Any = self.protocol
        if getattr(base, "_options_of", None) is self:
            base = base.__bases__[0]  # (options set again: a new subclass of the same protocol)
        # (a function, e.g. perMessageCompressionAccept, stays a plain function: not a method of the protocol)
        attrs = {name: staticmethod(value) if isinstance(value, FunctionType) else value
                 for name, value in ((name, getattr(self, name)) for name in base.CONFIG_ATTRS)}
        subclass: Any = type(base.__name__, (base,), {**attrs, "_options_of": self, "__module__": base.__module__,
                                                      "__qualname__": base.__qualname__})
        self.protocol = subclass

    def buildProtocol(self, addr: Any) -> Any:
        protocol: Any = super().buildProtocol(addr)
        if self._socket_log is not None:
            protocol.log = self._socket_log
        return protocol


for _name, _default in IDLE_DEFAULTS.items():  # the class-level defaults the shed attributes fall back to
    setattr(ServerProtocol, _name, _default)
