"""What both listeners hold per socket and per request, whoever the peer is (PROTOCOL.md §1, "Every limit").

A ``GuardedSite`` is a twisted.web Site whose every socket is admitted and
followed by a ``ListenerGuard``, from accept to close, whatever it becomes
(an HTTP exchange, a WebSocket, a refusal being answered):

- ``max_sockets``: the listener's open sockets. At the cap a new socket is
  closed at once, unanswered and holding nothing, so that file descriptors
  remain for the operator listener, Redis and outgoing HTTP
  (``refused["total"]``).
- ``per_ip``: open sockets per client address, counted from accept (0 = no
  cap). Over it the socket is answered ``429 Too Many Requests`` and closed
  (``refused["per_ip"]``).
- ``deadline``: seconds from accept, and from the end of each answer on a
  persistent connection, for a whole request to arrive; bytes trickling in do
  not extend it. A WebSocket upgrade must also complete within it (once open,
  the WebSocket's own limits apply). Past it a socket that had started a
  request, or never sent one, gets ``408 Request Timeout`` and is closed
  (aborted if it does not read it within ``ABORT_GRACE``)
  (``refused["handshake_timeout"]``); an idle persistent connection is just
  closed. It is acted on a reactor turn late, after what already waits in the
  kernel is read (bench/RESULTS.md "Storm refusals at 10,000").

A WebSocket protocol taking a socket over ``claim``s its ``Ticket`` (the deadline's timer moved on) and ``release``s it.

``BoundedRequest`` is the request of both Sites: a body over ``max_body`` bytes is discarded as it arrives
(``too_large`` is set: no memory, no temporary file), and no answer names the server's software or version
(twisted.web would send ``Server: TwistedWeb/<version>``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping
from io import BytesIO
from typing import Any

from twisted.internet.interfaces import IAddress, IDelayedCall, IProtocol, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import IResource
from twisted.web.server import Request, Site
from zope.interface import implementer

from wsgw.internals.twisted import http_channel, take_over
from wsgw.logs import LineBudget, writes
from wsgw.web.answers import Rendered
from wsgw.web.inbound import PeerCounts
from wsgw.web.upgrade import whole_upgrade

LIMITS = ("total", "per_ip", "handshake_timeout", "origin")
"""What ``ListenerGuard.refused`` counts (the ``limit`` label of ``wsgw_connections_refused_total``)."""

RESERVED_DESCRIPTORS = 192
"""File descriptors the public listener leaves, besides the operator listener's sockets: Redis connections,
outgoing HTTP (access backend, node metadata, OIDC keys), logs, the reactor's own, the accept in progress."""

ABORT_GRACE = 1.0
"""Seconds a socket closed at its deadline has to take its 408 before it is aborted."""

_TOO_MANY = (b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 39\r\n"
             b"Connection: close\r\n\r\ntoo many connections from this address\n")
_TIMED_OUT = (b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 30\r\n"
              b"Connection: close\r\n\r\nthe request took too long\n")


class BoundedRequest(Request):
    """A twisted.web request that keeps at most ``max_body`` bytes of body and names no server software; on a
    ``GuardedSite``, its socket's deadline stops while it is answered."""

    max_body = 0
    too_large = False

    def process(self) -> None:
        guard = getattr(getattr(self.channel, "site", None), "guard", None)
        ticket = guard.ticket_of(self.channel.transport) if guard is not None else None
        if ticket is not None:
            ticket.busy()
            self.notifyFinish().addBoth(lambda _: ticket.idle())
        super().process()

    def render(self, resrc: IResource) -> None:
        super().render(Rendered(resrc))  # (a HEAD without its body; a method not taken: a fixed answer)

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        if (name.encode("latin-1") if isinstance(name, str) else name).lower() == b"server":
            return  # twisted.web sets Server: TwistedWeb/<version> on every answer
        super().setHeader(name, value)

    def gotLength(self, length: int | None) -> None:
        # in memory whatever the length (twisted.web spools a chunked or large body to a temporary file)
        self.content = BytesIO()  # type: ignore[assignment]
        self.too_large = length is not None and length > self.max_body

    def handleContentChunk(self, data: bytes) -> None:
        if self.too_large:
            return
        assert self.content is not None
        if self.content.tell() + len(data) > self.max_body:
            self.too_large = True
            self.content.seek(0)
            self.content.truncate()
            return
        self.content.write(data)


def public_cap(configured: int, operator_sockets: int, open_files: int) -> tuple[int, str]:
    """The public listener's socket cap and how it was chosen: ``configured`` (0 = auto), never more than the
    open-files limit ``open_files`` (RLIMIT_NOFILE, negative = unlimited) minus the operator listener's
    ``operator_sockets`` (0 = uncapped: 64 kept) and ``RESERVED_DESCRIPTORS``."""
    if open_files < 0:
        open_files = 1 << 20  # unlimited: the kernel's own default ceiling (fs.nr_open)
    room = max(open_files - (operator_sockets or 64) - RESERVED_DESCRIPTORS, 1)
    if not configured:
        return room, f"auto: the open-files limit {open_files} minus {open_files - room} kept for the rest"
    if configured > room:
        return room, (f"[server] max_connections = {configured} lowered to {room}: the open-files limit is "
                      f"{open_files} and {open_files - room} are kept for the operator listener and the rest")
    return configured, "[server] max_connections"


class Ticket:
    """One accepted socket, counted from accept until it is closed; see the module docstring."""

    __slots__ = ("_guard", "host", "refused", "transport", "claimed", "received", "_timer", "_served", "_released")

    def __init__(self, guard: ListenerGuard, host: str | None, refused: bool = False) -> None:
        self._guard = guard
        self.host = host  # counted toward the per-address cap under this name, or None
        self.refused = refused  # over its address's cap: to be answered 429
        self.transport: Any = None
        self.claimed = False  # a WebSocket protocol took the socket over
        self.received = False  # bytes arrived since the last answer (or since accept)
        self._timer: IDelayedCall | None = None
        self._served = False
        self._released = False

    def start(self, transport: Any) -> None:
        """The socket is connected: its deadline runs."""
        self.transport = transport
        self._guard._tickets[transport] = self
        self._arm()

    def busy(self) -> None:
        """A whole request arrived: no deadline while it is answered."""
        self._cancel()

    def idle(self) -> None:
        """The answer is done: the next request on this connection must arrive within the deadline."""
        if not self.claimed and not self._released:
            self._served, self.received = True, False
            self._arm()

    def claim(self) -> None:
        """A WebSocket protocol took the socket over (and holds this ticket): its handshake must complete within
        the deadline."""
        self.claimed = True
        self._guard._tickets.pop(self.transport, None)
        self._arm()

    def opened(self) -> None:
        """The WebSocket is open: the deadline no longer applies."""
        self._cancel()

    def release(self) -> None:
        """The socket is closed (called once or more, acts once)."""
        if not self._released:
            self._released = True
            self._cancel()
            self._guard._released(self)
            self.transport = None

    def _arm(self) -> None:
        timer, deadline = self._timer, self._guard.deadline
        if deadline > 0 and not self._released and getattr(timer, "func", None) == self._due and timer.active():  # type: ignore[union-attr]
            timer.reset(deadline)  # type: ignore[union-attr]  # (the same timer moved on: none new, no cancel)
            return
        self._cancel()
        if deadline > 0 and not self._released:
            self._timer = self._guard.clock.callLater(deadline, self._due)

    def _cancel(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _due(self) -> None:  # timers run before reads: a call made now runs after the next read of every socket
        self._timer = self._guard.clock.callLater(0, self._expired)

    def _expired(self) -> None:
        self._timer, transport = None, self.transport
        if self.claimed:  # a WebSocket handshake that never completed: Autobahn may hold an answer, drop it all
            self._guard.refused["handshake_timeout"] += 1
            transport.abortConnection()
            return
        if self.received or not self._served:
            self._guard.refused["handshake_timeout"] += 1
            transport.write(_TIMED_OUT)
        transport.loseConnection()
        self._timer = self._guard.clock.callLater(ABORT_GRACE, transport.abortConnection)


class ListenerGuard:
    """The sockets of one listener (all its ports): the counts and caps of the module docstring.

    ``name`` is the listener's label in /metrics (``public``, ``operator``); ``max_sockets`` and ``per_ip``
    0 = no cap; ``deadline`` in seconds, 0 = none. ``open`` (sockets now) and ``refused`` (by limit) are read
    by /metrics.
    """

    _log = Logger()

    def __init__(self, clock: IReactorTime, name: str, *, max_sockets: int = 0, per_ip: int = 0,
                 deadline: float = 0.0) -> None:
        self.clock = clock
        self.name = name
        self.max_sockets = max_sockets
        self.per_ip = per_ip
        self.deadline = deadline
        self.open = 0
        self.refused: Counter[str] = Counter()
        self._peers = PeerCounts()
        self._tickets: dict[Any, Ticket] = {}
        self._warned_at = float("-inf")

    def admit(self, host: str | None) -> Ticket | None:
        """A socket was accepted from ``host`` (None: not an IP socket): its ticket (``refused`` over the
        per-address cap: answer it 429), or None at the listener's cap (close it at once)."""
        if self.max_sockets and self.open >= self.max_sockets:
            self.refused["total"] += 1
            if self.clock.seconds() - self._warned_at > 60:
                self._warned_at = self.clock.seconds()
                self._log.warn("{name} listener at its cap of {cap} open sockets: refusing new ones (counted in "
                               "wsgw_connections_refused_total)", name=self.name, cap=self.max_sockets)
            return None
        self.open += 1
        if host is None:
            return Ticket(self, None)
        # counted even without a cap, so that a cap set by a reload (SIGHUP) counts the sockets already open
        if not self._peers.acquire(host, self.per_ip):
            self.refused["per_ip"] += 1
            return Ticket(self, None, refused=True)
        return Ticket(self, host)

    def ticket_of(self, transport: Any) -> Ticket | None:
        """The ticket of a socket this guard admitted (None for any other transport)."""
        return self._tickets.get(transport)

    def _released(self, ticket: Ticket) -> None:
        self.open -= 1
        if ticket.host is not None:
            self._peers.release(ticket.host)
        self._tickets.pop(ticket.transport, None)


@implementer(IProtocol)
class _Counted:
    """The protocol of one admitted socket, releasing its ticket when the socket closes: twisted.web's HTTP
    channel, built at connect, or with ``upgrades`` at the first read, which goes to Autobahn directly when it is
    a whole upgrade to one of them (``wsgw.web.upgrade``). A WebSocket protocol taking the socket over replaces
    this one as the transport's protocol and releases the ticket itself."""

    def __init__(self, site: GuardedSite, addr: IAddress, ticket: Ticket) -> None:
        self._site = site
        self._addr = addr
        self._ticket = ticket
        self._inner: IProtocol | None = None
        self.transport: Any = None

    def makeConnection(self, transport: Any) -> None:
        self._ticket.start(transport)
        self.transport = transport
        if not self._site.upgrades:
            self._channel()

    def connectionMade(self) -> None:
        """(``makeConnection`` does the work.)"""

    def _channel(self) -> IProtocol:
        inner = self._inner = Site.buildProtocol(self._site, self._addr)
        assert inner is not None
        inner.makeConnection(self.transport)
        return inner

    def dataReceived(self, data: bytes) -> None:
        self._ticket.received = True
        inner = self._inner
        if inner is None:
            route = whole_upgrade(data)
            factory = None if route is None else self._site.upgrades.get(route)
            if factory is not None and take_over(self.transport, factory, data):
                return
            inner = self._channel()
        inner.dataReceived(data)

    def connectionLost(self, reason: Failure) -> None:
        try:
            if self._inner is not None:
                self._inner.connectionLost(reason)
        finally:
            self._ticket.release()


class _Refused(Protocol):
    """A socket over its address's cap: answered 429 and closed."""

    def __init__(self, ticket: Ticket) -> None:
        self._ticket = ticket

    def makeConnection(self, transport: Any) -> None:
        self._ticket.start(transport)
        super().makeConnection(transport)

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(_TOO_MANY)
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._ticket.release()


class _Dropped(Protocol):
    """A socket over the listener's cap behind TLS, where a factory may not refuse by returning None."""
    transport: Any

    def connectionMade(self) -> None:
        self.transport.abortConnection()


class GuardedSite(Site):
    """A Site whose sockets ``guard`` admits and follows; requests are ``BoundedRequest``s (``request_factory``).

    twisted.web's access log (a line per request) is off unless ``access_log`` is set, and then its lines are within
    ``log_budget`` (kind ``http``), so a peer cannot make the daemon write a line per request it sends. ``upgrades``
    maps routes to the WebSocket factories a socket's first read goes to directly when it is a whole upgrade to one
    of them (``_Counted``), as it would through the site's resources. twisted.web's own idle timeout (``timeOut``,
    60 s) is off when the guard's deadline is shorter: a timer per socket that could not fire first (bench/RESULTS.md
    "Connect path"). Access lines are info lines, but debug lines for routine requests (issue 14): a GET or HEAD of a
    path in ``debug_paths`` (the health probes), or with ``debug_gets`` any GET or HEAD answered below 400 (the
    operator listener's scrapes); a debug line the log does not write now (``wsgw.logs.writes``) spends no budget.
    Each line's event holds ``line`` (the combined-log-format line) and ``listener`` (``guard.name``).
    """

    _access = Logger(namespace="wsgw.web.access")
    protocol = http_channel  # twisted.web's channel, answering 400 at once to a line that cannot end (bare LF)

    def __init__(self, resource: Any, guard: ListenerGuard, request_factory: type[BoundedRequest], *,
                 access_log: bool = False, log_budget: LineBudget | None = None,
                 debug_paths: Collection[bytes] = (b"/healthz",), debug_gets: bool = False,
                 upgrades: Mapping[bytes, Factory] | None = None) -> None:
        super().__init__(resource, requestFactory=request_factory)
        self.guard = guard
        self.upgrades = dict(upgrades or {})
        if 0 < guard.deadline <= (self.timeOut or 0):
            # twisted.web's idle timeout (a timer per socket, reset by every read) never fires before the guard's
            # deadline, which runs from accept and from the end of each answer whatever arrives
            self.timeOut = None
        self.displayTracebacks = False
        self.noisy = False
        self._access_log = access_log
        self._budget = log_budget if log_budget is not None else LineBudget(guard.clock)
        self._debug_paths = frozenset(debug_paths)
        self._debug_gets = debug_gets

    def log(self, request: http.Request) -> None:
        if not self._access_log:
            return
        level = LogLevel.info
        if request.method in (b"GET", b"HEAD") and (
                (request.path.rstrip(b"/") or b"/") in self._debug_paths or (self._debug_gets and request.code < 400)):
            level = LogLevel.debug
            if not writes(level):
                return
        if self._budget.admit("http"):
            self._access.emit(level, "{line}", line=self._logFormatter(self._logDateTime, request),
                              listener=self.guard.name)

    def buildProtocol(self, addr: IAddress) -> IProtocol | None:  # type: ignore[override]
        ticket = self.guard.admit(getattr(addr, "host", None))
        if ticket is None:
            return None  # the listening port closes the socket at once
        if ticket.refused:
            return _Refused(ticket)
        return _Counted(self, addr, ticket)

    def behind_tls(self) -> Factory:
        """The factory to hand a TLS endpoint: TLS wraps what this site builds and cannot take None."""
        return _BehindTls(self)


class _BehindTls(Factory):
    def __init__(self, site: GuardedSite) -> None:
        self._site = site

    def doStart(self) -> None:
        self._site.doStart()

    def doStop(self) -> None:
        self._site.doStop()

    def buildProtocol(self, addr: IAddress) -> IProtocol | None:  # type: ignore[override]
        return self._site.buildProtocol(addr) or _Dropped()
