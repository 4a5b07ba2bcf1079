"""``/metrics`` on the operator listener: Prometheus exposition through prometheus-client.

Metrics cost nothing on the per-event path: ``GatewayCollector`` reads the
counters the core already keeps, through a ``MetricsView``, when Prometheus
scrapes. The few delays measured as they happen are ``wsgw.web.timing``'s.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from typing import Any, Protocol

import attrs
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import Request

from wsgw.auth.resolvers import OUTCOMES as ACCESS_OUTCOMES
from wsgw.chat.service import LIMITS as CHAT_LIMITS
from wsgw.events.usermeta import OUTCOMES
from wsgw.gateway import Census
from wsgw.interfaces import IBus
from wsgw.logs import KINDS
from wsgw.web.listener import LIMITS
from wsgw.web.operator import ReauthCounts, operator_metrics, reauth_metrics
from wsgw.web.timing import Pacing, TimedListener, histograms


class GatewayCounts(Protocol):
    """The gateway's counters (``wsgw.gateway.Gateway``)."""

    subscribes_accepted: int
    refusals: Counter[str]
    closes: Counter[int]
    withdrawn: int
    revoked: Counter[str]

    @property
    def revocations(self) -> Sized: ...

    def census(self) -> Census: ...


class DispatchCounts(Protocol):
    """Bus events by topic (``wsgw.dispatch.Dispatcher``; ``received`` a plain dict there, read only here)."""

    @property
    def received(self) -> Mapping[str, int]: ...

    malformed: Counter[str]
    crashed: Counter[str]


class NodeCounts(Protocol):
    """The node rules' counters (``wsgw.events.nodes.NodeHandler``); ``observe_merge`` is set by ``Metrics``."""

    merged: int
    observe_merge: Callable[[float], object] | None
    silent_dropped: int

    @property
    def pending(self) -> int: ...

    @property
    def user_meta_lookups(self) -> Counter[str]: ...

    @property
    def user_meta_waiting(self) -> int: ...


class ChatCounts(Protocol):
    """The chat's counters (``wsgw.chat.service.ChatService``)."""

    handled: Counter[str]
    refused: int
    limits_refused: Counter[str]
    queued_frames: int
    unpublished: int
    republished: int
    unpublished_dropped: int

    @property
    def store_calls(self) -> tuple[int, int]: ...

    @property
    def rooms_active(self) -> int: ...

    @property
    def presences_expired(self) -> int: ...


class ChatStoreCounts(Protocol):
    """The chat store's changes in doubt (``wsgw.chat.redis_store.RedisChatStore``, issue 11 section 5)."""

    resent: int
    refused: int

    @property
    def in_doubt(self) -> int: ...


class Delivering(Protocol):
    """A topic handler, for its count of frames handed to sockets."""

    @property
    def delivered(self) -> int: ...


class LinkState(Protocol):
    """One Redis connection, for its state."""

    @property
    def role(self) -> str: ...

    @property
    def connected(self) -> bool: ...

    @property
    def reconnects(self) -> int: ...

    @property
    def stalled(self) -> str | None: ...


class ListenerCounts(Protocol):
    """One listener's sockets (``wsgw.web.listener.ListenerGuard``)."""

    name: str
    open: int
    max_sockets: int
    refused: Counter[str]


class AccessCounts(Protocol):
    """The http access resolver's requests (``wsgw.auth.resolvers.HttpResolver``)."""

    lookups: Counter[str]
    observe: Callable[[float], object] | None

    @property
    def in_flight(self) -> int: ...


class ControlCounts(Protocol):
    """Control messages by ``(op, outcome)`` (``wsgw.control.ControlHandler``)."""

    counts: Counter[tuple[str, str]]


class LogCounts(Protocol):
    """The log lines left out (``wsgw.logs.LineBudget``)."""

    suppressed: Counter[str]


@attrs.frozen
class MetricsView:
    """What /metrics reads of one gateway, at scrape time: ``deliveries`` maps the ``kind`` label to the
    handler counting it; ``redis_links`` gives the Redis connections (none on the embedded bus); ``listeners``
    the public and operator listeners; ``access`` the http access resolver (None with the claims one);
    ``log_budget`` the budget of log lines peers cause."""

    gateway: GatewayCounts
    dispatcher: DispatchCounts
    nodes: NodeCounts
    chat: ChatCounts
    deliveries: Mapping[str, Delivering]
    bus: IBus
    redis_links: Callable[[], Sequence[LinkState]]
    listeners: Sequence[ListenerCounts] = ()
    access: AccessCounts | None = None
    log_budget: LogCounts | None = None
    chat_store: ChatStoreCounts | None = None
    control: ControlCounts | None = None
    reauth: ReauthCounts | None = None
    pacing: Pacing | None = None


class GatewayCollector(Collector):
    """Reads the gateway's own counters at scrape time (names and labels follow Prometheus conventions)."""

    def __init__(self, view: MetricsView, publish_requests: Counter[int],
                 operator_requests: Counter[tuple[str, int]] | None = None) -> None:
        self._view = view
        self._publish_requests = publish_requests
        self._operator_requests = operator_requests if operator_requests is not None else Counter()

    def collect(self) -> Iterator[Metric]:
        p = self._view
        gateway = p.gateway
        census = gateway.census()
        yield _gauge("wsgw_connections", "Open WebSocket connections.", "endpoint", census.open, ("ws", "chat"))
        yield _gauge("wsgw_connections_subscribed", "Connections holding a verified token.", "endpoint",
                     census.subscribed, ("ws", "chat"))
        yield _gauge("wsgw_outbound_frames_queued", "Frames waiting in per-socket flows (paced, or blocked by a "
                     "client reading slowly).", None, census.waiting_frames)
        yield _gauge("wsgw_outbound_queued_bytes", "Bytes waiting in per-socket flows, as counted against "
                     "[delivery] max_queued_bytes.", None, census.waiting_bytes)
        yield _counter("wsgw_outbound_frames_withdrawn", "Waiting frames dropped by an access change (unsubscribe, "
                       "re-subscribe) because the new access would not produce them.", None, gateway.withdrawn)
        yield _counter("wsgw_subscribes_accepted", "Subscribes accepted (first ones and refreshes).", None,
                       gateway.subscribes_accepted)
        yield _counter("wsgw_subscribes_refused", "Subscribes refused, by reason.", "reason", gateway.refusals,
                       ("missing_token", "invalid_token", "access_denied", "access_unavailable", "access_busy",
                        "internal_error", "too_many_waiting", "too_many_sockets"))
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
        delivered = {kind: handler.delivered for kind, handler in p.deliveries.items()}
        yield _counter("wsgw_deliveries", "Frames handed to sockets, by kind of event.", "kind", delivered)
        nodes = p.nodes
        yield _counter("wsgw_node_events_merged", "Node events coalesced into a pending merge.", None, nodes.merged)
        yield _counter("wsgw_node_events_silent_dropped", "Silent node events dropped past the silent budget.", None,
                       nodes.silent_dropped)
        yield _gauge("wsgw_node_merges_pending", "Nodes whose merge window is open.", None, nodes.pending)
        yield _counter("wsgw_node_meta_lookups", "Node events looked up in the node-metadata backend ([access] "
                       "node_meta_url), by outcome (all but ok: the event went out as published; busy: too many "
                       "lookups at once; suspended: after 5 failures in a row, for 5 s).", "outcome",
                       nodes.user_meta_lookups, OUTCOMES)
        yield _gauge("wsgw_node_meta_events_waiting", "Node events waiting for their node-metadata lookup, or behind "
                     "their node's earlier ones.", None, nodes.user_meta_waiting)
        chat = p.chat
        yield _gauge("wsgw_chat_rooms_active", "Chat rooms with a socket of this instance attached.", None,
                     chat.rooms_active)
        yield _counter("wsgw_chat_frames", "Chat requests handled, by action.", "action", chat.handled,
                       ("JOIN", "LEAVE", "POST", "HISTORY", "DELETE_MSG"))
        yield _counter("wsgw_chat_frames_refused", "Chat requests answered with an error frame.", None, chat.refused)
        yield _counter("wsgw_chat_limits_refused", "Chat frames refused by a bound, by limit: queued_frames, "
                       "queued_bytes (a socket's frames waiting for its previous ones past [websocket] "
                       "inbound_burst frames, or that many times max_frame_chat bytes: error frame, closed 4029), "
                       "rooms_per_user (a JOIN creating one more GLOBAL or NODE room than [chat] max_rooms_per_user), "
                       "store_busy (a frame that found [chat] max_store_calls store calls in flight), "
                       "edits_per_message (an edit past [chat] max_edits_per_message), history_page (a HISTORY "
                       "cut to [chat] max_history_page messages, then MAY_HAVE_MORE), rooms_per_socket (a JOIN past [chat] "
                       "max_rooms_per_socket rooms joined on one socket), history_bytes (a HISTORY answer cut to "
                       "a quarter of [delivery] max_queued_bytes, then MAY_HAVE_MORE).",
                       "limit", chat.limits_refused, CHAT_LIMITS)
        yield _gauge("wsgw_chat_frames_queued", "Chat frames waiting for their socket's previous ones.", None,
                     chat.queued_frames)
        in_flight, busy = chat.store_calls
        yield _gauge("wsgw_chat_store_calls_in_flight", "Chat store calls of this instance not answered yet.", None,
                     in_flight)
        yield _counter("wsgw_chat_store_calls_refused", "Chat store calls refused at [chat] max_store_calls in "
                       "flight (client frames answered busy, background presence removals left to the sweep).",
                       None, busy)
        yield _counter("wsgw_chat_presences_expired", "Chat presences past their deadline (no JOIN or PING for "
                       "presence_timeout) that this instance's sweep removed, whichever instance stored them.", None,
                       chat.presences_expired)
        yield _gauge("wsgw_chat_events_unpublished", "Events of stored chat changes the bus refused, published "
                     "again every second until it takes them.", None, chat.unpublished)
        yield _counter("wsgw_chat_events_republished", "Events of stored chat changes published after the bus "
                       "refused them.", None, chat.republished)
        yield _counter("wsgw_chat_events_unpublished_dropped", "Events of stored chat changes never broadcast: "
                       "refused by the bus past 1000 waiting, or still refused at shutdown.", None,
                       chat.unpublished_dropped)
        if p.chat_store is not None:
            store = p.chat_store
            yield _gauge("wsgw_chat_changes_in_doubt", "Chat changes sent to the store without an answer yet (a "
                         "timeout: they may be applied yet), sent again until one is answered.", None, store.in_doubt)
            yield _counter("wsgw_chat_changes_resent", "Runs of chat changes in doubt sent again (each change is "
                           "idempotent: applied once).", None, store.resent)
            yield _counter("wsgw_chat_changes_refused", "Chat changes refused unsent ('the chat store is unavailable') "
                           "because [chat] max_changes_in_doubt changes were waiting for the store to answer.", None,
                           store.refused)
        yield from listener_metrics(p.listeners)
        if p.access is not None:
            yield _counter("wsgw_access_lookups", "Access resolves of the http resolver, by outcome: backend requests "
                           "answered ok, refused (401/403/404, then cached for [access] refusal_ttl), failed, "
                           "timeout; resolves answered from the cache, sharing a request in flight, or refused busy "
                           "(at [access] max_requests in flight: closed 1013).", "outcome", p.access.lookups,
                           ACCESS_OUTCOMES)
            yield _gauge("wsgw_access_requests_in_flight", "Requests to the access backend now.", None,
                         p.access.in_flight)
        if p.log_budget is not None:
            yield _counter("wsgw_log_lines_suppressed", "Log lines about peers left out past [log] "
                           "peer_lines_per_minute, by kind.", "kind", p.log_budget.suppressed, KINDS)
        yield _counter("wsgw_publish_requests", "POST /publish requests on the operator listener, by HTTP status.",
                       "status", {str(k): v for k, v in self._publish_requests.items()})
        yield from operator_metrics(self._operator_requests, None if p.control is None else p.control.counts,
                                    gateway.revoked, len(gateway.revocations))
        if p.reauth is not None:
            yield from reauth_metrics(p.reauth)
        bus = p.bus
        yield _gauge("wsgw_bus_up", "1 while the bus can deliver and publish.", None, 1 if bus.connected else 0)
        links = list(p.redis_links())
        if links:
            yield _gauge("wsgw_redis_connected", "1 while the Redis connection is up, by role.", "role",
                         {link.role: 1 if link.connected else 0 for link in links})
            yield _gauge("wsgw_redis_stalled", "1 while a Redis connection is up but has not answered a PING for "
                         "2 s (Redis frozen or blocked; /healthz answers 503), by role.", "role",
                         {link.role: 1 if link.stalled else 0 for link in links})
            yield _counter("wsgw_redis_reconnects", "Redis connections re-established after a loss, by role.", "role",
                           {link.role: link.reconnects for link in links})


def listener_metrics(listeners: Sequence[ListenerCounts]) -> Iterator[Metric]:
    if not listeners:
        return
    yield _gauge("wsgw_listener_sockets", "Open sockets of a listener, in every state (HTTP request, WebSocket "
                 "handshake, open WebSocket, closing).", "listener", {g.name: g.open for g in listeners})
    yield _gauge("wsgw_listener_sockets_max", "A listener's cap on open sockets ([server] max_connections, [admin] "
                 "max_connections; 0 = none).", "listener", {g.name: g.max_sockets for g in listeners})
    refused = CounterMetricFamily("wsgw_connections_refused", "Sockets refused or dropped by a limit, by listener "
                                  "and limit: total (at the listener's cap: closed unanswered), per_ip (429), "
                                  "handshake_timeout (no whole request or handshake within [server] "
                                  "handshake_timeout: 408), origin (403).", labels=["listener", "limit"])
    for guard in listeners:
        counts = {limit: 0 for limit in LIMITS}
        counts.update(guard.refused)
        for limit, count in sorted(counts.items()):
            refused.add_metric([guard.name, limit], count)
    yield refused


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
    """One registry per gateway: the collector, process metrics, and the histograms of ``wsgw.web.timing``
    (timed, and dated, by ``clock``: the reactor)."""

    def __init__(self, view: MetricsView, topics: Iterable[str], clock: IReactorTime) -> None:
        self.publish_requests: Counter[int] = Counter()
        self.operator_requests: Counter[tuple[str, int]] = Counter()  # (path, status), of /disconnect and /revoke
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(GatewayCollector(view, self.publish_requests, self.operator_requests))
        ProcessCollector(registry=self.registry)  # (not PlatformCollector: no answer names a software version)
        self._clock = clock
        self._lag_children = histograms(self.registry, clock, topics, view.nodes, view.pacing, view.access)

    def timed(self, listener: Callable[[str, bytes], Any]) -> TimedListener:
        """``listener`` with its time per bus event observed in the lag histogram."""
        return TimedListener(listener, self._clock, self._lag_children)

    def render(self, accept: str | None) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


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
