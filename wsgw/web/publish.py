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

from twisted.internet.defer import Deferred
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


class TokenPage(Resource):
    """A POST-only (or ``method``-only) JSON page of the operator listener, for the bearer of the operator token (``[admin]
    publish_token_file``; None: the page is off, 403): 405 for another method (``usage`` says what to send), 401
    without the right ``Authorization: Bearer``; each answer counted by ``count(request, status)``."""

    isLeaf = True
    _log = Logger()
    method = b"POST"  # the one method answered (``GET /info``: GET)
    usage = "use POST with a JSON object"
    off = "this page is off: set [admin] publish_token_file"

    def __init__(self, token: bytes | None) -> None:
        super().__init__()
        self._token = token

    def set_token(self, token: bytes | None) -> None:
        """Require ``token`` from the next request on (SIGHUP, wsgw.reload); None: answer 403."""
        self._token = token

    def render(self, request: Request) -> bytes | int:
        if request.method != self.method:
            request.setHeader(b"allow", self.method)
            return self._body(request, 405, {"error": self.usage})
        refused = self._refused(request)
        return refused if refused is not None else self.post(request)

    def post(self, request: Request) -> bytes | int:
        """A request (of ``method``) by the token's bearer: the answer, or NOT_DONE_YET (``answer_when``)."""
        raise NotImplementedError

    def count(self, request: Request, status: int) -> None:
        raise NotImplementedError

    def answer_when(self, request: Request, d: Deferred[Any], answer: Callable[[Any], tuple[int, dict[str, Any]]],
                    what: str) -> int:
        """Answer ``answer(result)`` (status, JSON object) once ``d`` fires; 503 naming ``what`` failed (logged) when
        it fails; nothing when the client is gone by then."""
        finished = [False]
        request.notifyFinish().addErrback(lambda _: finished.__setitem__(0, True))

        def done(result: Any) -> None:
            if not finished[0]:
                request.write(self._body(request, *answer(result)))
                request.finish()

        def failed(failure: Failure) -> None:
            value = failure.value
            error = value.subFailure.getErrorMessage() if hasattr(value, "subFailure") else failure.getErrorMessage()
            self._log.warn("POST {path}: the {what} failed: {error}", path=request.path.decode("utf-8", "replace"),
                           what=what, error=error)
            if not finished[0]:
                request.write(self._body(request, 503, {"error": f"{what} unavailable: {error}"}))
                request.finish()

        d.addCallbacks(done, failed)
        return NOT_DONE_YET

    def _refused(self, request: Request) -> bytes | None:
        if self._token is None:
            return self._body(request, 403, {"error": self.off})
        header = request.getHeader(b"authorization") or b""
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self._token):
            request.setHeader(b"www-authenticate", b'Bearer realm="wsgw"')
            return self._body(request, 401, {"error": "missing or wrong bearer token"})
        return None

    def _body(self, request: Request, status: int, answer: dict[str, Any]) -> bytes:
        self.count(request, status)
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return encode(answer) + b"\n"


class PublishPage(TokenPage):
    """``POST /publish/<topic>``: one event onto the bus, as an internal service would publish it. ``<topic>`` is
    a logical name of ``validators`` or its channel in ``channels`` (logical name -> Redis channel, the config's
    ``[topics]``; PROTOCOL.md §1); the answer names the logical one."""

    usage = "use POST with one event as a JSON object"
    off = "publishing over HTTP is off: set [admin] publish_token_file"

    def __init__(self, bus: IBus, token: bytes | None, validators: Mapping[str, Validator],
                 counts: Counter[int], channels: Mapping[str, str] | None = None) -> None:
        super().__init__(token)
        self._bus = bus
        self._validators = validators
        self._counts = counts
        self._topic_of = {channel: topic for topic, channel in (channels or {}).items() if topic in validators}

    def count(self, request: Request, status: int) -> None:
        self._counts[status] += 1

    def post(self, request: Request) -> bytes | int:
        status, reason, topic, payload = self._check(request)
        if status != 200:
            return self._body(request, status, {"error": reason})
        assert topic is not None and payload is not None
        try:
            d = self._bus.publish(topic, payload)
        except Exception as e:  # noqa: BLE001 - e.g. an embedded bus listener bug: answer, never hang
            return self._body(request, 503, {"error": f"the bus refused the event: {e}"})

        def published(receivers: Any) -> tuple[int, dict[str, Any]]:
            answer: dict[str, Any] = {"published": topic, "bytes": len(payload)}
            if isinstance(receivers, int):
                answer["receivers"] = receivers
            return 200, answer

        return self.answer_when(request, d, published, "bus")

    def _check(self, request: Request) -> tuple[int, str, str | None, bytes | None]:
        parts = request.path.split(b"/")
        topic = parts[2].decode("utf-8", "replace") if len(parts) == 3 else ""
        topic = topic if topic in self._validators else self._topic_of.get(topic, topic)
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


class CappedRequest(BoundedRequest):
    """A request whose body is kept only up to ``MAX_PUBLISH_BYTES``; past that it is discarded as it arrives and
    ``too_large`` is set, so an oversized upload costs no memory."""

    max_body = MAX_PUBLISH_BYTES
