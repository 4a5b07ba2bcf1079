"""One twisted.web Site serving /ws, /ws/event, /chat, /ws/chat, /healthz, and the live page at / when it is on."""

from __future__ import annotations

import base64
import hashlib
import importlib.resources
import re

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from wsgw.interfaces import IBus


class Health(Resource):
    """200 ``ok`` when the bus is connected, 503 with the bus state otherwise."""

    isLeaf = True

    def __init__(self, bus: IBus) -> None:
        super().__init__()
        self._bus = bus

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        if self._bus.connected:
            return b"ok\n"
        request.setResponseCode(503)
        return f"bus {self._bus.state}\n".encode()

    render_HEAD = render_GET


class _Root(Resource):
    """Routes on the whole path, so /ws (a leaf) and /ws/chat can both exist."""

    def __init__(self, routes: dict[bytes, IResource]) -> None:
        super().__init__()
        self._routes = routes

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        full = request.path.rstrip(b"/") or b"/"
        return self._routes.get(full) or notFound()

    def render(self, request: Request) -> bytes:
        return notFound().render(request)


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
    """Autobahn's upgrade resource, minus the garbage cycle it leaves per connection.

    The takeover leaves the HTTP channel and its request pointing at each other
    (``channel.requests`` / ``request.channel``) and never finishes the request:
    26 objects per socket that only a full garbage collection frees, which at
    10,000 sockets made the connection storm's full collections bigger and more
    frequent. Dropping the channel's list after the takeover lets reference
    counting free both.
    """

    def render(self, request: Request) -> bytes | int:
        result: bytes | int = super().render(request)
        channel = request.channel
        if channel is not None and channel.transport is None:  # taken over (not the 426 page)
            channel.requests = []
        return result


def make_site(ws_factory: WebSocketServerFactory, chat_factory: WebSocketServerFactory, bus: IBus,
              live_page: bool = False) -> Site:
    events = _Upgrade(ws_factory)
    chat = _Upgrade(chat_factory)
    routes: dict[bytes, IResource] = {
        b"/ws": events,
        b"/ws/event": events,
        b"/chat": chat,
        b"/ws/chat": chat,
        b"/healthz": Health(bus),
    }
    if live_page:
        routes[b"/"] = routes[b"/index.html"] = LivePage()
    site = Site(_Root(routes))
    site.displayTracebacks = False
    site.noisy = False
    return site
