"""How a resource of either listener is rendered (``wsgw.web.listener.BoundedRequest.render``): a HEAD without its
body, and a method the resource does not take answered with a fixed text, never the request's bytes.

twisted.web answers a method a resource has no ``render_<METHOD>`` for with HTML pages that quote the request:
405 ``Your browser approached me (at <request target>) with the method "POST"...`` (GET, HEAD or POST) and 501
``I don't know how to treat a <METHOD> request.`` (any other): reflected content, escaped but chosen by the peer,
as the refused handshakes were (``wsgw.web.refusals``). ``Rendered`` answers them 405 with ``Allow`` (RFC 9110
§15.5.6) or 501, each a fixed ``text/plain`` body naming the methods the resource takes.
"""

from __future__ import annotations

from typing import Any

from twisted.web.resource import IResource
from twisted.web.server import Request, UnsupportedMethod, supportedMethods


class Rendered:
    """``resource`` as twisted.web renders it, but: a method it does not take gets a fixed answer (the module
    docstring); a HEAD gets the status and headers of its GET, the ``Content-Length`` of the body it would send,
    no body (RFC 9110 §9.3.2): given the body, twisted.web drops it but logs, at info and outside any line budget,
    ``Warning: HEAD request <BoundedRequest at 0x...> ...`` for every HEAD of any peer."""

    def __init__(self, resource: IResource) -> None:
        self._resource = resource

    def render(self, request: Request) -> bytes | int:
        try:
            body: bytes | int = self._resource.render(request)
        except UnsupportedMethod as e:
            methods: Any = e.allowedMethods
            allowed = [m for m in methods if isinstance(m, bytes)]
            if request.method == b"HEAD" and b"GET" in allowed:
                raise  # twisted.web renders the GET and sends its headers (its own fixed log line, at info)
            return method_refused(request, allowed)
        if request.method == b"HEAD" and isinstance(body, bytes) and body:
            request.setHeader(b"content-length", b"%d" % len(body))
            return b""
        return body


def method_refused(request: Request, allowed: list[bytes]) -> bytes:
    """405 with ``Allow: <allowed>`` when the request's method is one twisted.web knows (``supportedMethods``: GET,
    HEAD, POST), else 501; a fixed text naming ``allowed`` (the resource's methods, never the request's)."""
    listed = b", ".join(sorted(set(allowed)))
    if request.method in supportedMethods:
        request.setResponseCode(405, b"Method Not Allowed")
        request.setHeader(b"allow", listed)
        text = b"method not allowed here; allowed: " + listed
    else:
        request.setResponseCode(501, b"Not Implemented")
        text = b"method not implemented; allowed here: " + listed
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return text + b"\n"
