"""``GET /info`` and the operator page, on the operator listener (issue 14, "An operator page").

``GET /info``: header ``Authorization: Bearer <token>`` with the token of
``[admin] publish_token_file``, as ``POST /publish``; answers 200 with
``InstanceRegistry.instances()`` (every live instance of the deployment, shape
in ``wsgw.instances`` and docs/protocol.md), 401 without the right token, 403
when no token file is configured, 405 for another method.

The operator page (``[operator] page = yes``): three static files of the
package (``static/operator.html``, ``operator.js``, ``operator.css``), no build
step, no third-party code, served with a CSP that allows scripts and styles
from the operator listener only (``'self'``: the page has no inline script or
style, so it needs neither the live page's script hash nor its
``'unsafe-inline'`` styles) and requests to the operator listener only.
"""

from __future__ import annotations

import importlib.resources
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from twisted.web.resource import Resource
from twisted.web.server import Request

from wsgw.instances import InstanceRegistry
from wsgw.web.publish import TokenPage

CSP = (b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
       b"base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

FILES = {"operator.html": b"text/html; charset=utf-8", "operator.js": b"text/javascript; charset=utf-8",
         "operator.css": b"text/css; charset=utf-8"}


class InfoPage(TokenPage):
    """``GET /info``: every live instance (``registry.instances()``), for the bearer of the operator token."""

    method = b"GET"
    usage = "use GET"
    off = "/info is off: set [admin] publish_token_file"

    def __init__(self, registry: InstanceRegistry, token: bytes | None, counts: Counter[tuple[str, int]]) -> None:
        super().__init__(token)
        self._registry = registry
        self._counts = counts  # answers by (path, status), /metrics wsgw_operator_requests_total

    def count(self, request: Request, status: int) -> None:
        self._counts[("/info", status)] += 1

    def post(self, request: Request) -> bytes | int:
        return self.answer_when(request, self._registry.instances(), lambda listing: (200, listing),
                                "instance registry")


class StaticFile(Resource):
    """One file of ``wsgw/web/static`` (a name of FILES), read once, served with the operator page's CSP."""

    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self._body = importlib.resources.files("wsgw.web").joinpath(f"static/{name}").read_bytes()
        self._type = FILES[name]

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", self._type)
        request.setHeader(b"content-security-policy", CSP)
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"referrer-policy", b"no-referrer")
        request.setHeader(b"cache-control", b"no-cache")
        return self._body

    render_HEAD = render_GET


def operator_page() -> dict[bytes, Resource]:
    """The routes of the operator page: ``/`` (and ``/operator.html``), ``/operator.js``, ``/operator.css``."""
    routes: dict[bytes, Resource] = {f"/{name}".encode(): StaticFile(name) for name in FILES}
    routes[b"/"] = routes[b"/operator.html"]
    return routes


class Census(Protocol):
    """Open and subscribed sockets by endpoint name (``wsgw.gateway.Census``)."""

    @property
    def open(self) -> Counter[str]: ...

    @property
    def subscribed(self) -> Counter[str]: ...


def summary(census: Census, rooms: int, closes: Mapping[int, int], bus_state: str, bus_connected: bool,
            listen: Sequence[str]) -> dict[str, Any]:
    """The live fields of an instance record (``InstanceRegistry``'s ``snapshot``), from the counters /metrics
    exports: open and subscribed sockets by endpoint, chat rooms with a socket here, server closes by code."""
    endpoints = ("ws", "chat")
    return {"listen": list(listen), "connections": {e: census.open[e] for e in endpoints},
            "subscribed": {e: census.subscribed[e] for e in endpoints}, "rooms": rooms,
            "closes": {str(code): n for code, n in sorted(closes.items())},
            "bus": {"state": bus_state, "connected": bus_connected}}
