"""``POST /publish/<topic>`` on the operator listener: one event onto the bus, as an internal service would.

Body: one event as a JSON object; header ``Authorization: Bearer <token>`` with
the token of ``[admin] publish_token_file``. Answers: 200 once the bus took it,
401 without the right token, 403 when no token file is configured, 404 for an
unknown topic, 400 with the reason when the body is not an event of that topic
(checked by the topic's own ``validate``, exactly as the dispatcher would drop
it), 413 over ``MAX_PUBLISH_BYTES``, 503 when the bus is down.
"""

from __future__ import annotations

import hmac
import json
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from wsgw.frames import MalformedEvent, encode
from wsgw.interfaces import IBus
from wsgw.web.listener import BoundedRequest

MAX_PUBLISH_BYTES = 1 << 20  # the dispatcher's limit for one bus event

Validator = Callable[[Any], object]
"""A topic's ``validate(event)``: raises MalformedEvent for an event its handler would drop."""


class PublishPage(Resource):
    """``POST /publish/<topic>``: one event onto the bus, as an internal service would publish it."""

    isLeaf = True
    _log = Logger()

    def __init__(self, bus: IBus, token: bytes | None, validators: Mapping[str, Validator],
                 counts: Counter[int]) -> None:
        super().__init__()
        self._bus = bus
        self._token = token
        self._validators = validators
        self._counts = counts

    def set_token(self, token: bytes | None) -> None:
        """Require ``token`` from the next request on (SIGHUP, wsgw.reload); None: answer 403."""
        self._token = token

    def render(self, request: Request) -> bytes | int:
        if request.method != b"POST":
            request.setHeader(b"allow", b"POST")
            return self._body(request, 405, {"error": "use POST with one event as a JSON object"})
        return super().render(request)  # type: ignore[no-any-return]

    def render_POST(self, request: Request) -> bytes | int:
        status, reason, topic, payload = self._check(request)
        if status != 200:
            return self._body(request, status, {"error": reason})
        assert topic is not None and payload is not None
        try:
            d = self._bus.publish(topic, payload)
        except Exception as e:  # noqa: BLE001 - e.g. an embedded bus listener bug: answer, never hang
            return self._body(request, 503, {"error": f"the bus refused the event: {e}"})
        finished = [False]
        request.notifyFinish().addErrback(lambda _: finished.__setitem__(0, True))

        def published(receivers: Any) -> None:
            if not finished[0]:
                answer: dict[str, Any] = {"published": topic, "bytes": len(payload)}
                if isinstance(receivers, int):
                    answer["receivers"] = receivers
                request.write(self._body(request, 200, answer))
                request.finish()

        def failed(failure: Failure) -> None:
            self._log.warn("POST /publish/{topic}: the bus failed: {error}", topic=topic,
                           error=failure.getErrorMessage())
            if not finished[0]:
                request.write(self._body(request, 503, {"error": f"bus unavailable: {failure.getErrorMessage()}"}))
                request.finish()

        d.addCallbacks(published, failed)
        return NOT_DONE_YET

    def _check(self, request: Request) -> tuple[int, str, str | None, bytes | None]:
        if self._token is None:
            return 403, "publishing over HTTP is off: set [admin] publish_token_file", None, None
        if not self._authorized(request.getHeader(b"authorization")):
            request.setHeader(b"www-authenticate", b'Bearer realm="wsgw"')
            return 401, "missing or wrong bearer token", None, None
        parts = request.path.split(b"/")
        topic = parts[2].decode("utf-8", "replace") if len(parts) == 3 else ""
        if topic not in self._validators:
            return 404, f"unknown topic {topic[:40]!r}: one of {', '.join(sorted(self._validators))}", None, None
        if getattr(request, "too_large", False):
            return 413, f"the event is over {MAX_PUBLISH_BYTES} bytes", None, None
        assert request.content is not None
        payload = request.content.read()
        try:
            event = json.loads(payload)
        except (ValueError, RecursionError) as e:
            return 400, f"not JSON: {str(e)[:80]}", None, None
        if not isinstance(event, dict):
            return 400, "the event must be a JSON object", None, None
        try:
            self._validators[topic](event)
        except MalformedEvent as e:
            return 400, f"not a {topic} event: {e}", None, None
        except Exception:  # noqa: BLE001 - the dispatcher would count this as a handler failure
            self._log.failure("POST /publish/{topic}: the topic's rules failed on the event", topic=topic)
            return 400, f"the {topic} rules could not handle this event", None, None
        return 200, "", topic, payload

    def _authorized(self, header: bytes | None) -> bool:
        assert self._token is not None
        if not header:
            return False
        scheme, _, given = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self._token)

    def _body(self, request: Request, status: int, answer: dict[str, Any]) -> bytes:
        self._counts[status] += 1
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return encode(answer) + b"\n"


class CappedRequest(BoundedRequest):
    """A request whose body is kept only up to ``MAX_PUBLISH_BYTES``; past that it is discarded as it arrives and
    ``too_large`` is set, so an oversized upload costs no memory."""

    max_body = MAX_PUBLISH_BYTES
