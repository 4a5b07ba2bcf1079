"""One twisted.web Site serving /ws, /ws/event, /chat, /ws/chat and /healthz."""

from __future__ import annotations

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


def make_site(ws_factory: WebSocketServerFactory, chat_factory: WebSocketServerFactory, bus: IBus) -> Site:
    events = WebSocketResource(ws_factory)
    chat = WebSocketResource(chat_factory)
    routes: dict[bytes, IResource] = {
        b"/ws": events,
        b"/ws/event": events,
        b"/chat": chat,
        b"/ws/chat": chat,
        b"/healthz": Health(bus),
    }
    site = Site(_Root(routes))
    site.displayTracebacks = False
    site.noisy = False
    return site
