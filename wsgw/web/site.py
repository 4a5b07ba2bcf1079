"""The two twisted.web Sites and their one router.

The public Site serves ``/ws``, ``/ws/event``, ``/chat``, ``/ws/chat``,
``/healthz``, and the live page at ``/`` when it is on (PROTOCOL.md §1). The
operator Site (``[admin] listen``, loopback by default, never the public port)
serves ``/metrics``, ``POST /publish/<topic>``, ``POST /disconnect``, ``POST /revoke``, ``GET /info``, ``/healthz``
and the operator page when it is on (``wsgw.web.info``). Both are
``wsgw.web.listener.GuardedSite``s: each socket is counted and bounded from
accept to close by its listener's ``ListenerGuard``.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.resources
import re
from collections.abc import Callable, Mapping
from io import BytesIO
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.web.pages import errorPage, notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from wsgw.control import Operator
from wsgw.instances import InstanceRegistry
from wsgw.interfaces import IBus
from wsgw.internals.twisted import release_taken_over_request
from wsgw.logs import LineBudget
from wsgw.web.info import InfoPage, operator_page
from wsgw.web.listener import BoundedRequest, GuardedSite, ListenerGuard
from wsgw.web.metrics import Metrics, MetricsPage
from wsgw.web.operator import OperatorPage
from wsgw.web.protocols import GatewayFactory
from wsgw.web.publish import CappedRequest, PublishPage, TokenPage, Validator


class Router(Resource):
    """Routes on the whole path (trailing ``/`` ignored), so ``/ws`` (a leaf) and ``/ws/chat`` can both exist;
    ``prefixes`` route every path under them (``/publish/`` + topic). Anything else is 404; without ``bodies``,
    a request with a body (its ``BoundedRequest.too_large``) is 413."""

    def __init__(self, routes: Mapping[bytes, IResource], prefixes: Mapping[bytes, IResource] | None = None,
                 *, bodies: bool = True) -> None:
        super().__init__()
        self._routes = dict(routes)
        self._prefixes = dict(prefixes or {})
        self._bodies = bodies

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        if not self._bodies and getattr(request, "too_large", False):
            return errorPage(413, "Payload Too Large", "Requests here have no body.")
        full = request.path.rstrip(b"/") or b"/"
        found = self._routes.get(full)
        if found is not None:
            return found
        for prefix, resource in self._prefixes.items():
            if full.startswith(prefix):
                return resource
        return notFound()

    def render(self, request: Request) -> bytes:
        return notFound().render(request)  # type: ignore[no-any-return]

    def resources(self) -> list[IResource]:
        """Every resource routed to (each once)."""
        found = list(self._routes.values()) + list(self._prefixes.values())
        return [r for i, r in enumerate(found) if all(r is not other for other in found[:i])]


def set_operator_token(site: GuardedSite, token: bytes | None) -> None:
    """The operator Site's pages (``make_admin_site``) require ``token`` from the next request on (SIGHUP,
    wsgw.reload); None: they answer 403."""
    router = site.resource
    assert isinstance(router, Router)
    for resource in router.resources():
        if isinstance(resource, TokenPage):
            resource.set_token(token)


class Health(Resource):
    """``/healthz``: 200 ``ok`` while ``problem()`` is None, else 503 with the problem (PROTOCOL.md §1)."""

    isLeaf = True

    def __init__(self, problem: Callable[[], str | None]) -> None:
        super().__init__()
        self._problem = problem

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        problem = self._problem()
        if problem is None:
            return b"ok\n"
        request.setResponseCode(503)
        return f"{problem}\n".encode()

    render_HEAD = render_GET


class LivePage(Resource):
    """The live page (``static/index.html``): one static file, its inline script allowed by hash in the CSP."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self._body = importlib.resources.files("wsgw.web").joinpath("static/index.html").read_bytes()
        scripts = re.findall(rb"<script>(.*?)</script>", self._body, re.DOTALL)
        hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s).digest()).decode()}'" for s in scripts)
        self._csp = (f"default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; connect-src 'self' ws: "
                     "wss:; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'").encode()

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-security-policy", self._csp)
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"referrer-policy", b"no-referrer")
        request.setHeader(b"cache-control", b"no-cache")
        return self._body

    render_HEAD = render_GET


class _Upgrade(WebSocketResource):
    """Autobahn's upgrade resource, after the checks of RFC 6455 §4.1/§4.2 Autobahn does not make, minus the
    garbage cycle it leaves per connection.

    Refused before Autobahn sees them: an upgrade over HTTP/1.0 (400; Autobahn's resource would
    rewrite the request line as HTTP/1.1), a request without ``Upgrade: websocket`` (426 with
    ``Upgrade: websocket``, instead of Autobahn's version page), a ``Sec-WebSocket-Version`` other than 13
    (426 with ``Sec-WebSocket-Version: 13``, RFC 6455 §4.2.2). Bytes read after the request's head are
    handed to Autobahn after it, as the socket's first WebSocket bytes.

    The takeover leaves the HTTP channel and its request pointing at each other
    and never finishes the request: 26 objects per socket that only a full
    garbage collection frees, which at 10,000 sockets made the connection
    storm's full collections bigger and more frequent (bench/RESULTS.md).
    """

    def render(self, request: Request) -> bytes | int:
        refusal = _refusal(request)
        if refusal is not None:
            return refusal
        # Bytes read after the head (a client that sent its first frame with the upgrade, not waiting for the 101
        # as RFC 6455 §4.1 says it must) are still twisted.web's unread line buffer: Autobahn's render hands the
        # protocol the head then ``request.content``, so there they are the socket's first bytes, not lost.
        rest = request.channel.clearLineBuffer()
        if rest:
            body: Any = request.content  # (a BoundedRequest's: a BytesIO, empty)
            request.content = BytesIO((body.read() if body is not None else b"") + rest)  # type: ignore[assignment]
        result: bytes | int = super().render(request)
        release_taken_over_request(request)
        return result


def _refusal(request: Request) -> bytes | None:
    """The plain-text answer refusing an upgrade request Autobahn would take, or None to hand it over."""
    if request.clientproto != b"HTTP/1.1":
        return _plain(request, 400, b"a WebSocket upgrade needs HTTP/1.1 (RFC 6455 section 4.1)")
    upgrade = request.getHeader(b"upgrade") or b""
    if b"websocket" not in (token.strip().lower() for token in upgrade.split(b",")):
        request.setHeader(b"upgrade", b"websocket")
        return _plain(request, 426, b"this is a WebSocket endpoint: send a WebSocket upgrade (RFC 6455)")
    versions = request.requestHeaders.getRawHeaders(b"sec-websocket-version")
    if versions is not None and len(versions) == 1 and versions[0].strip() != b"13":
        request.setHeader(b"sec-websocket-version", b"13")
        return _plain(request, 426, b"WebSocket version 13 only (RFC 6455 section 4.2.2)")
    return None


_REASONS = {400: b"Bad Request", 426: b"Upgrade Required"}  # (twisted.web has no phrase for 426, RFC 7231 6.5.15)


def _plain(request: Request, code: int, text: bytes) -> bytes:
    """A refused upgrade's answer; the connection is closed after it, as a failed handshake's (RFC 6455 §4.2.2)."""
    request.setResponseCode(code, _REASONS[code])
    request.setHeader(b"connection", b"close")
    request.channel.persistent = False  # twisted.web closes the connection once the answer is written
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return text + b"\n"


def make_site(ws_factory: GatewayFactory, chat_factory: GatewayFactory, problem: Callable[[], str | None],
              guard: ListenerGuard, live_page: bool = False, *, access_log: bool = False,
              log_budget: LineBudget | None = None) -> GuardedSite:
    """The public Site, its sockets admitted and followed by ``guard`` (shared with the two factories);
    ``problem`` answers /healthz; ``access_log`` and ``log_budget`` as ``GuardedSite`` takes them (its access
    lines of ``GET /healthz`` are debug lines). A whole upgrade in a socket's first read goes to its factory
    without twisted.web's parse (``wsgw.web.upgrade``); ``_Upgrade`` takes every other."""
    events = _Upgrade(ws_factory)
    chat = _Upgrade(chat_factory)
    routes: dict[bytes, IResource] = {
        b"/ws": events,
        b"/ws/event": events,
        b"/chat": chat,
        b"/ws/chat": chat,
        b"/healthz": Health(problem),
    }
    if live_page:
        routes[b"/"] = routes[b"/index.html"] = LivePage()
    upgrades = {b"/ws": ws_factory, b"/ws/event": ws_factory, b"/chat": chat_factory, b"/ws/chat": chat_factory}
    return GuardedSite(Router(routes, bodies=False), guard, BoundedRequest, access_log=access_log,
                       log_budget=log_budget, upgrades=upgrades)


def make_admin_site(metrics: Metrics, bus: IBus, problem: Callable[[], str | None],
                    validators: Mapping[str, Validator], publish_token: bytes | None,
                    guard: ListenerGuard, *, access_log: bool = False,
                    log_budget: LineBudget | None = None, operator: Operator | None = None,
                    registry: InstanceRegistry | None = None, page: bool = False,
                    channels: Mapping[str, str] | None = None) -> GuardedSite:
    """The operator Site; ``validators`` are the topics ``/publish`` accepts, each with its shape check;
    ``operator`` sends ``/disconnect`` and ``/revoke`` (None: they answer 403); ``registry`` answers ``GET /info``
    (None: no /info); ``page``: serve the operator page (``wsgw.web.info``) at ``/``; ``channels`` (topic ->
    Redis channel) lets ``/publish`` take a topic's channel name too (PROTOCOL.md §1). Its access lines of the GETs
    it answers below 400 (``/metrics``, ``/healthz``, ``/info``, the page) are debug lines."""
    publish = PublishPage(bus, publish_token, validators, metrics.publish_requests, channels)
    routes: dict[bytes, IResource] = {b"/metrics": MetricsPage(metrics), b"/healthz": Health(problem)}
    if registry is not None:
        routes[b"/info"] = InfoPage(registry, publish_token, metrics.operator_requests)
    if page:
        routes.update(operator_page())
    for op in ("disconnect", "revoke"):
        routes[f"/{op}".encode()] = OperatorPage(op, operator, publish_token, metrics.operator_requests)
    return GuardedSite(Router(routes, {b"/publish/": publish}), guard, CappedRequest, access_log=access_log,
                       log_budget=log_budget, debug_gets=True)
