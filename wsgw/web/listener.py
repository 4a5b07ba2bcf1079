"""What both listeners hold per socket and per request, whoever the peer is (PROTOCOL.md §1).

``BoundedRequest`` is the request of both Sites: a body over ``max_body`` bytes
is discarded as it arrives (``too_large`` is set: no memory, no temporary
file), and no answer names the server's software or version (twisted.web
would send ``Server: TwistedWeb/<version>``).
"""

from __future__ import annotations

from io import BytesIO

from twisted.web.server import Request


class BoundedRequest(Request):
    """A twisted.web request that keeps at most ``max_body`` bytes of body and names no server software."""

    max_body = 0
    too_large = False

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
