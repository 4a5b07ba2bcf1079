"""The operator listener: ``/metrics`` (Prometheus, through prometheus-client), ``POST /publish/<topic>``, ``/healthz``.

It is a separate twisted.web Site on its own endpoint (``[admin] listen``,
loopback by default), never on the public port.

Metrics cost nothing on the per-event path: ``GatewayCollector`` reads the
counters the parts already keep (dispatcher, topic handlers, gateway, chat,
bus) when Prometheus scrapes. The one thing measured per bus event is the
delivery lag histogram, observed once per event (not per recipient) by
``TimedListener`` around the dispatcher: from the bus handing the event over
to the handler having written it to every recipient socket. Node events held
by the merge window or by per-session pacing leave later than that.

``POST /publish/<topic>`` (body: one event as a JSON object, header
``Authorization: Bearer <token>`` with the token of ``[admin]
publish_token_file``) puts the event on the bus exactly as an internal service
would: 200 once the bus took it, 401 without the right token, 403 when no token
file is configured, 404 for an unknown topic, 400 with the reason when the body
is not an event of that topic (checked by the topic's own rules run against an
empty session table), 413 over ``MAX_PUBLISH_BYTES``, 503 when the bus is down.
"""

from __future__ import annotations

import hmac
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from io import BytesIO
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from wsgw.chat.rooms import ChatService
from wsgw.chat.store import MemoryChatStore
from wsgw.events import MalformedEvent
from wsgw.events.activity import ActivityHandler
from wsgw.events.idm import IdmHandler
from wsgw.events.nodes import NodeHandler
from wsgw.events.tasks import TaskHandler
from wsgw.frames import encode
from wsgw.interfaces import IBus
from wsgw.sessions import SessionTable
from wsgw.web.site import Health

MAX_PUBLISH_BYTES = 1 << 20  # the dispatcher's limit for one bus event
LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


# -- metrics ----------------------------------------------------------------------------------------------------


class GatewayCollector(Collector):
    """Reads the gateway's own counters at scrape time.

    ``parts`` is duck-typed (the GatewayService): ``gateway``, ``dispatcher``,
    ``nodes``, ``chat``, ``bus``, ``handlers`` (topic -> handler, each with a
    ``delivered`` count) and ``redis_links`` (objects with ``role``,
    ``connected``, ``reconnects``).
    """

    def __init__(self, parts: Any, publish_requests: Counter[int]) -> None:
        self._parts = parts
        self._publish_requests = publish_requests

    def collect(self) -> Iterator[Metric]:
        p = self._parts
        gateway = p.gateway
        open_: Counter[str] = Counter()
        subscribed: Counter[str] = Counter()
        queued = 0
        for session in list(gateway.sessions):
            open_[session.endpoint] += 1
            if session.access is not None:
                subscribed[session.endpoint] += 1
            if session.pacer is not None:
                queued += session.pacer.pending
        yield _gauge("wsgw_connections", "Open WebSocket connections.", "endpoint", open_, ("ws", "chat"))
        yield _gauge("wsgw_connections_subscribed", "Connections holding a verified token.", "endpoint", subscribed,
                     ("ws", "chat"))
        yield _gauge("wsgw_outbound_frames_queued", "Node event frames waiting in per-session pacing queues.",
                     None, queued)
        yield _counter("wsgw_subscribes_accepted", "Subscribes accepted (first ones and refreshes).", None,
                       gateway.subscribes_accepted)
        yield _counter("wsgw_subscribes_refused", "Subscribes refused, by reason.", "reason", gateway.refusals,
                       ("missing_token", "invalid_token", "access_denied", "access_unavailable", "internal_error"))
        yield _counter("wsgw_server_closes", "Sockets the server closed, by close code (4008 too slow, 4029 "
                       "flooding, 4001 token, 1000 shutdown, ...).", "code", {str(k): v for k, v in
                                                                             gateway.closes.items()},
                       ("4008", "4029"))
        dispatcher = p.dispatcher
        topics = tuple(p.bus.topics)
        yield _counter("wsgw_bus_events_received", "Events received from the bus, by topic.", "topic",
                       dispatcher.received, topics)
        yield _counter("wsgw_bus_events_malformed", "Bus events dropped as malformed, by topic.", "topic",
                       dispatcher.malformed, topics)
        yield _counter("wsgw_bus_events_failed", "Bus events whose handler failed (a bug; logged with its "
                       "traceback), by topic.", "topic", dispatcher.crashed, topics)
        delivered: dict[str, int] = {}
        for topic, handler in p.handlers.items():
            name = "nodes" if topic in ("tree", "meta") else topic
            delivered[name] = getattr(handler, "delivered", 0)
        yield _counter("wsgw_deliveries", "Frames handed to sockets, by kind of event.", "kind", delivered)
        nodes = p.nodes
        yield _counter("wsgw_node_events_merged", "Node events coalesced into a pending merge.", None, nodes.merged)
        yield _counter("wsgw_node_events_silent_dropped", "Silent node events dropped past the silent budget.", None,
                       nodes.silent_dropped)
        yield _gauge("wsgw_node_merges_pending", "Nodes whose merge window is open.", None, nodes.pending)
        chat = p.chat
        yield _gauge("wsgw_chat_rooms_active", "Chat rooms with a socket of this instance attached.", None,
                     chat.rooms_active)
        yield _counter("wsgw_chat_frames", "Chat requests handled, by action.", "action", chat.handled,
                       ("JOIN", "LEAVE", "POST", "HISTORY", "DELETE_MSG"))
        yield _counter("wsgw_chat_frames_refused", "Chat requests answered with an error frame.", None, chat.refused)
        yield _counter("wsgw_publish_requests", "POST /publish requests on the operator listener, by HTTP status.",
                       "status", {str(k): v for k, v in self._publish_requests.items()})
        bus = p.bus
        yield _gauge("wsgw_bus_up", "1 while the bus can deliver and publish.", None, 1 if bus.connected else 0)
        links = list(p.redis_links)
        if links:
            yield _gauge("wsgw_redis_connected", "1 while the Redis connection is up, by role.", "role",
                         {link.role: 1 if link.connected else 0 for link in links})
            yield _counter("wsgw_redis_reconnects", "Redis connections re-established after a loss, by role.", "role",
                           {link.role: link.reconnects for link in links})


def _family(kind: type, name: str, doc: str, label: str | None, values: Any, always: Iterable[str] = ()) -> Metric:
    if label is None:
        return kind(name, doc, value=values)  # type: ignore[no-any-return]
    family = kind(name, doc, labels=[label])
    merged = {key: 0 for key in always}
    merged.update(values)
    for key, value in sorted(merged.items()):
        family.add_metric([str(key)], value)
    return family  # type: ignore[no-any-return]


def _gauge(name: str, doc: str, label: str | None, values: Any, always: Iterable[str] = ()) -> Metric:
    return _family(GaugeMetricFamily, name, doc, label, values, always)


def _counter(name: str, doc: str, label: str | None, values: Any, always: Iterable[str] = ()) -> Metric:
    return _family(CounterMetricFamily, name, doc, label, values, always)


class Metrics:
    """One registry per gateway: the collector, process metrics, and the delivery lag histogram."""

    def __init__(self, parts: Any, topics: Iterable[str]) -> None:
        self.publish_requests: Counter[int] = Counter()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(GatewayCollector(parts, self.publish_requests))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.lag = Histogram(
            "wsgw_delivery_lag_seconds",
            "From a bus event's receipt to its last socket write (merged and paced node events leave later), "
            "by topic.",
            ["topic"], registry=self.registry, buckets=LAG_BUCKETS,
        )
        self._lag_children = {topic: self.lag.labels(topic=topic) for topic in topics}

    def timed(self, listener: Callable[[str, bytes], Any], clock: IReactorTime) -> TimedListener:
        """``listener`` with its time per bus event observed in the lag histogram."""
        return TimedListener(listener, clock, self._lag_children)

    def render(self, accept: str | None) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


class TimedListener:
    """A bus listener that observes, once per event, how long the wrapped listener took."""

    def __init__(self, listener: Callable[[str, bytes], Any], clock: IReactorTime, children: Mapping[str, Any]) -> None:
        self._listener = listener
        self._clock = clock
        self._children = children

    def __call__(self, topic: str, payload: bytes) -> Any:
        start = self._clock.seconds()
        try:
            return self._listener(topic, payload)
        finally:
            child = self._children.get(topic)
            if child is not None:
                child.observe(self._clock.seconds() - start)


class MetricsPage(Resource):
    """``GET /metrics`` in the Prometheus text format (OpenMetrics when the scraper asks for it)."""

    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        accept = request.getHeader(b"accept")
        body, content_type = self._metrics.render(accept.decode("latin-1") if accept else None)
        request.setHeader(b"content-type", content_type.encode())
        request.setHeader(b"cache-control", b"no-store")
        return body


# -- publishing -------------------------------------------------------------------------------------------------


def topic_validators(clock: IReactorTime) -> dict[str, Callable[[dict[str, Any]], None]]:
    """Each topic's own event rules, run against an empty session table: they raise MalformedEvent exactly when the
    dispatcher would drop the event, and deliver nothing."""
    empty = SessionTable()
    nodes = NodeHandler(empty, clock, batch_window=0, silent_rate=0)
    chat = ChatService(clock, MemoryChatStore(), _nowhere)
    return {
        "tree": nodes.handle,
        "meta": nodes.handle,
        "tasks": TaskHandler(empty).handle,
        "idm": IdmHandler(empty).handle,
        "activity": ActivityHandler(empty).handle,
        "chat": chat.handle,
    }


def _nowhere(payload: bytes) -> Any:
    raise AssertionError("a validator never publishes")


class PublishPage(Resource):
    """``POST /publish/<topic>``: one event onto the bus, as an internal service would publish it."""

    isLeaf = True
    _log = Logger()

    def __init__(self, bus: IBus, token: bytes | None, validators: Mapping[str, Callable[[dict[str, Any]], None]],
                 counts: Counter[int]) -> None:
        super().__init__()
        self._bus = bus
        self._token = token
        self._validators = validators
        self._counts = counts

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


class CappedRequest(Request):
    """A request whose body is kept only up to ``MAX_PUBLISH_BYTES``; past that it is discarded as it arrives and
    ``too_large`` is set, so an oversized upload costs no memory."""

    too_large = False

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > MAX_PUBLISH_BYTES:
            self.too_large = True
            self.content = BytesIO()  # type: ignore[assignment]
        else:
            super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.too_large:
            return
        assert self.content is not None
        if self.content.tell() + len(data) > MAX_PUBLISH_BYTES:
            self.too_large = True
            self.content.seek(0)
            self.content.truncate()
            return
        self.content.write(data)


class _AdminRoot(Resource):
    def __init__(self, metrics: IResource, publish: IResource, health: IResource) -> None:
        super().__init__()
        self._metrics = metrics
        self._publish = publish
        self._health = health

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        full = request.path.rstrip(b"/")
        if full == b"/metrics":
            return self._metrics
        if full == b"/healthz":
            return self._health
        if full.startswith(b"/publish/"):
            return self._publish
        return notFound()

    def render(self, request: Request) -> bytes:
        return notFound().render(request)


def make_admin_site(metrics: Metrics, bus: IBus, topics: Iterable[str], publish_token: bytes | None,
                    clock: IReactorTime) -> Site:
    """The operator Site; ``topics`` are the bus's logical topics (the ones /publish accepts)."""
    validators = {topic: rules for topic, rules in topic_validators(clock).items() if topic in topics}
    publish = PublishPage(bus, publish_token, validators, metrics.publish_requests)
    site = Site(_AdminRoot(MetricsPage(metrics), publish, Health(bus)), requestFactory=CappedRequest)
    site.displayTracebacks = False
    site.noisy = False
    return site
