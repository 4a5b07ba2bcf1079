"""The delays /metrics measures as they happen (``wsgw.web.metrics`` reads everything else at scrape time).

A node event's time from the bus to its socket is the sum of three histograms,
each saying in its help text what it covers:

- ``wsgw_delivery_lag_seconds``, once per bus event (not per recipient), by
  ``TimedListener`` around the dispatcher: from the bus handing the event over
  to its frames handed to every recipient's flow (from there written at once,
  with the other frames of the same bus read, or after a pacing hold);
  a node event held by the merge window is handed on later, in that window's
  observation;
- ``wsgw_node_merge_delay_seconds``, once per merged node event
  (``NodeBatcher.observe``): from its first event's receipt to its frames handed
  to every recipient's flow, the window included;
- ``wsgw_pacing_delay_seconds``, once per frame held by a socket's pacing
  (``Flow.pace``'s ``observe``), at its release: how long it was held. Frames
  sent at once cost nothing more.

Frames blocked by a client reading slowly, and node events waiting for their
node-metadata lookup, are in none of them. ``wsgw_access_request_seconds`` is
each access backend request's duration.

They are ``PlainHistogram``s, not prometheus-client's ``Histogram``: an
observation is a bisect and two additions on plain numbers (no lock, no walk
over the buckets: ~0.2 µs instead of ~1.1 µs an observation, issue 13, goal 2;
the reactor thread is the only writer and reader), and the collector writes at
scrape time exactly the samples ``Histogram`` writes (names, help, buckets,
``_count``, ``_sum``, ``_created``; tests/test_timing_histograms.py).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from twisted.internet.interfaces import IReactorTime

from wsgw.bus import deliver

LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
HOLD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 30.0)
ACCESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Merging(Protocol):
    """Where merged node events are observed (``wsgw.events.nodes.NodeHandler.observe_merge``)."""

    observe_merge: Callable[[float], object] | None


class Pacing(Protocol):
    """Where held frames are observed (``wsgw.events.endpoint.EventsEndpoint.observe_pacing``)."""

    observe_pacing: Callable[[float], object] | None


class Timed(Protocol):
    """Where access backend requests are observed (``wsgw.auth.resolvers.HttpResolver.observe``)."""

    observe: Callable[[float], object] | None


class Series:
    """One histogram series: ``counts[i]`` observations in bucket ``i`` alone (not cumulative; the last is
    +Inf's), ``sum`` of the values, ``created`` its Unix time in seconds (prometheus-client's ``_created``)."""

    __slots__ = ("bounds", "counts", "sum", "created")

    def __init__(self, bounds: tuple[float, ...], created: float) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0
        self.created = created

    def observe(self, value: float) -> None:
        """Count ``value`` (seconds) in the first bucket whose bound is >= it, as ``Histogram.observe`` (a NaN,
        which no duration is, would count in the first bucket where prometheus-client counts it in none)."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class PlainHistogram(Collector):
    """A histogram family on plain numbers: ``observe`` (set only when unlabelled: its one series' own method)
    or ``child(*label_values).observe``; the samples at collection are those of prometheus-client's
    ``Histogram`` with the same arguments. ``buckets``: sorted upper bounds (ValueError otherwise), +Inf added
    when missing. ``clock`` dates each series' ``_created`` (``seconds()``: Unix time on the real reactor, as
    prometheus-client's own clock). Not thread-safe (one reactor thread)."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], clock: IReactorTime,
                 labelnames: Sequence[str] = ()) -> None:
        bounds = [float(b) for b in buckets]
        if bounds != sorted(bounds) or not bounds:
            raise ValueError(f"{name}: buckets not in sorted order: {buckets!r}")
        if bounds[-1] != math.inf:
            bounds.append(math.inf)
        self._name, self._documentation = name, documentation
        self._bounds, self._labelnames = tuple(bounds), tuple(labelnames)
        self._les = [floatToGoString(b) for b in bounds]
        self._series: dict[tuple[str, ...], Series] = {}
        self._clock = clock
        if not labelnames:
            self.observe = self.child().observe

    def child(self, *values: str) -> Series:
        """The series of these label values (one per label name, in order), made on first use."""
        series = self._series.get(values)
        if series is None:
            if len(values) != len(self._labelnames):
                raise ValueError(f"{self._name}: labels {self._labelnames!r}, given {values!r}")
            series = self._series[values] = Series(self._bounds, self._clock.seconds())
        return series

    def describe(self) -> Iterator[Metric]:
        yield Metric(self._name, self._documentation, "histogram")

    def collect(self) -> Iterator[Metric]:
        family = Metric(self._name, self._documentation, "histogram")
        created = getattr(prometheus_metrics, "_use_created", True)  # PROMETHEUS_DISABLE_CREATED_SERIES, as theirs
        for values, series in list(self._series.items()):
            labels = dict(zip(self._labelnames, values, strict=True))
            total = 0.0
            for le, count in zip(self._les, series.counts, strict=True):
                total += count
                family.add_sample(self._name + "_bucket", {**labels, "le": le}, total)
            family.add_sample(self._name + "_count", labels, total)
            if self._bounds[0] >= 0:
                family.add_sample(self._name + "_sum", labels, series.sum)
            if created:
                family.add_sample(self._name + "_created", labels, series.created)
        yield family


def histograms(registry: CollectorRegistry, clock: IReactorTime, topics: Iterable[str], nodes: Merging,
               pacing: Pacing | None, access: Timed | None) -> dict[str, Series]:
    """Register the histograms in ``registry`` (``_created`` from ``clock``) and set each observer (``pacing``,
    ``access``: when not None); returns the delivery lag histogram's child for each of ``topics`` (for
    ``TimedListener``)."""
    lag = _registered(registry, PlainHistogram(
        "wsgw_delivery_lag_seconds",
        "From a bus event's receipt to its frames handed to every recipient's outbound flow (from there written at "
        "once, with the other frames of the same bus read, or after a pacing hold), by topic. Not included: a node "
        "event's merge window (wsgw_node_merge_delay_seconds), pacing holds (wsgw_pacing_delay_seconds), frames "
        "blocked by a client reading slowly, node-metadata lookups.",
        LAG_BUCKETS, clock, ["topic"]))
    nodes.observe_merge = _registered(registry, PlainHistogram(
        "wsgw_node_merge_delay_seconds", "Per merged node event (one per node and window, however many events it "
        "folds): from its first event's receipt to its frames handed to every recipient's flow, the merge window "
        "([delivery] batch_window, restarted by each event of the node) included.", HOLD_BUCKETS, clock)).observe
    if pacing is not None:
        pacing.observe_pacing = _registered(registry, PlainHistogram(
            "wsgw_pacing_delay_seconds", "Per node-event frame held by a socket's pacing ([delivery] pacing_rate, "
            "pacing_burst): from being held to being released to the socket (at most pacing_max_delay; earlier for "
            "an Optimistic event). Frames sent at once are not observed.", HOLD_BUCKETS, clock)).observe
    if access is not None:
        access.observe = _registered(registry, PlainHistogram(
            "wsgw_access_request_seconds", "Duration of each request to the access backend (answered, refused, "
            "failed or timed out).", ACCESS_BUCKETS, clock)).observe
    return {topic: lag.child(topic) for topic in topics}


def _registered(registry: CollectorRegistry, histogram: PlainHistogram) -> PlainHistogram:
    registry.register(histogram)
    return histogram


class TimedListener:
    """A bus listener that observes, once per event, how long the wrapped listener took (in ``children``'s series
    of the event's topic; a topic without one is not observed).

    ``batch(messages)`` (the messages of one bus read, ``wsgw.bus.redis.RedisBus``) times each event from the end
    of the one before it (the first from the call), with one clock read per event and one per batch, when the
    wrapped listener has ``each`` (``wsgw.dispatch.Dispatcher.each``); otherwise it calls ``self`` for each
    message, as the bus would.
    """

    def __init__(self, listener: Callable[[str, bytes], Any], clock: IReactorTime,
                 children: Mapping[str, Series]) -> None:
        self._listener = listener
        self._each: Callable[[Iterable[tuple[str, bytes]], Callable[[str], object]], object] | None = getattr(
            listener, "each", None)
        self._clock = clock
        self._seconds = clock.seconds
        self._children = children
        self._start = 0.0

    def __call__(self, topic: str, payload: bytes) -> Any:
        start = self._clock.seconds()
        try:
            return self._listener(topic, payload)
        finally:
            child = self._children.get(topic)
            if child is not None:
                child.observe(self._clock.seconds() - start)

    def batch(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Every ``(topic, payload)`` of ``messages`` in order, each observed as a call would be."""
        each = self._each
        if each is None:
            for topic, payload in messages:
                deliver([self], topic, payload)
            return
        self._start = self._seconds()
        each(messages, self._observe)

    def _observe(self, topic: str) -> None:
        """``topic``'s event is handled: observe the time since the end of the one before (or the batch's start)."""
        end = self._seconds()
        child = self._children.get(topic)
        if child is not None:  # child.observe(end - start), inlined (once per bus event)
            elapsed = end - self._start
            child.counts[bisect_left(child.bounds, elapsed)] += 1
            child.sum += elapsed
        self._start = end
